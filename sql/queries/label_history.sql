-- name: label_history
-- Every labelling decision ever made for image :image_id, oldest first (annotations are never changed).
SELECT a.id, a.created_at, t.name AS taxon, a.status, a.annotator, a.source, a.score
  FROM annotations a
  JOIN taxa t ON t.id = a.taxon_id
 WHERE a.image_id = :image_id
 ORDER BY a.created_at, a.id;
