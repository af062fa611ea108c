-- name: taxon_subtree
-- The ids of taxon `root` (by name) and of every taxon below it; no rows when the name is unknown.
CREATE OR REPLACE FUNCTION taxon_subtree(root text) RETURNS SETOF integer
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE sub(id, ids) AS (
        SELECT id, ARRAY[id] FROM taxa WHERE name = root
        UNION ALL
        SELECT t.id, sub.ids || t.id FROM taxa t JOIN sub ON t.parent_id = sub.id WHERE t.id <> ALL (sub.ids)
    )
    SELECT id FROM sub
$$;
