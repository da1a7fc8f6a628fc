-- Migration 16: each subscription group's incarnation (grouping.py,
-- GroupSpec.incarnation), drawn afresh each time a group is created: a
-- group deleted and created again with the same name and settings is
-- another group, and what a replica remembers of the first (its delivery
-- attempt counts) must not carry over to it. NULL for groups created
-- before (read as ""). A nullable column without a default: no table rewrite.
ALTER TABLE chronicle.subscription_groups ADD COLUMN incarnation text;
