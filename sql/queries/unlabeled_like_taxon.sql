-- name: unlabeled_like_taxon
-- Unlabeled images closest to the centroid of the validated images of taxon :'taxon' (model :model_id), best first.
-- psql: \set taxon 'Copepoda' \set model_id 1 \set k 50 then \i sql/queries/unlabeled_like_taxon.sql
WITH centroid AS (
    SELECT avg(e.embedding) AS v
      FROM embeddings e
      JOIN current_labels l ON l.image_id = e.image_id
     WHERE e.model_id = :model_id AND l.taxon = :'taxon' AND l.status = 'validated'
)
SELECT e.image_id, e.embedding <=> c.v AS cosine_distance, i.original_path
  FROM embeddings e
  JOIN images i ON i.id = e.image_id
 CROSS JOIN centroid c
 WHERE e.model_id = :model_id
   AND c.v IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM image_labels l WHERE l.image_id = e.image_id)
 ORDER BY e.embedding <=> c.v
 LIMIT :k;
