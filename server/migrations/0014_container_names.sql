-- A container's name is unique in its project whatever its case, so every check of a name
-- (each copy's insert, a copy request without a name, a rename) compares with NOCASE. The
-- UNIQUE (project_id, name) index compares exactly, so those checks used it for the
-- project only and then read every container of the project: a burst of copies into one
-- project got slower with each copy (`make load`). This index answers them by name.
CREATE INDEX containers_name_nocase ON containers(project_id, name COLLATE NOCASE)
    WHERE deleted_at IS NULL;
