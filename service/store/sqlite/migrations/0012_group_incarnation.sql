-- Chronicle's SQLite schema, version 11 -> 12: each subscription group's
-- incarnation (grouping.py, GroupSpec.incarnation), drawn afresh each time a
-- group is created: a group deleted and created again with the same name and
-- settings is another group, and what the server remembers of the first
-- (its delivery attempt counts) must not carry over to it. NULL for groups
-- created before (read as "").
ALTER TABLE subscription_groups ADD COLUMN incarnation TEXT;
