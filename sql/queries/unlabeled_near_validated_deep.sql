-- name: unlabeled_near_validated_deep
-- Unlabeled images from deeper than :min_depth m that are most similar (nearest validated example, cosine) to validated images of taxon :'taxon' or its subtree, in model :model_id.
-- psql: \set taxon 'Oithona' \set min_depth 100 \set model_id 1 \set k 50 then \i sql/queries/unlabeled_near_validated_deep.sql
WITH examples AS (
    SELECT e.image_id, e.embedding
      FROM embeddings e
      JOIN image_labels l ON l.image_id = e.image_id
     WHERE e.model_id = :model_id
       AND l.status = 'validated'
       AND l.taxon_id IN (SELECT taxon_subtree(:'taxon'))
)
SELECT c.image_id,
       min(c.embedding <=> x.embedding) AS distance_to_nearest_example,
       i.sample,
       i.depth_min,
       i.depth_max,
       i.original_path
  FROM embeddings c
  JOIN images i ON i.id = c.image_id
 CROSS JOIN examples x
 WHERE c.model_id = :model_id
   AND i.depth_min > :min_depth
   AND NOT EXISTS (SELECT 1 FROM image_labels l WHERE l.image_id = c.image_id)
 GROUP BY c.image_id, i.sample, i.depth_min, i.depth_max, i.original_path
 ORDER BY distance_to_nearest_example, c.image_id
 LIMIT :k;
