"""Authentication, authorization, encryption at rest."""
