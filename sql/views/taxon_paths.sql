-- name: taxon_paths
-- Every taxon with its rank, WoRMS AphiaID, depth and full path from the root ("living>Copepoda>Oithona").
CREATE OR REPLACE VIEW taxon_paths AS
WITH RECURSIVE walk(id, name, parent_id, rank, aphia_id, depth, path, ids) AS (
    SELECT t.id, t.name, t.parent_id, t.rank, t.aphia_id, 0, t.name, ARRAY[t.id]
      FROM taxa t
     WHERE t.parent_id IS NULL
    UNION ALL
    SELECT c.id, c.name, c.parent_id, c.rank, c.aphia_id, w.depth + 1, w.path || '>' || c.name, w.ids || c.id
      FROM taxa c
      JOIN walk w ON c.parent_id = w.id
     WHERE c.id <> ALL (w.ids)  -- a cycle (which taxonomy import refuses) must not loop forever
)
SELECT id, name, parent_id, rank, aphia_id, depth, path, ids AS lineage_ids
  FROM walk;
