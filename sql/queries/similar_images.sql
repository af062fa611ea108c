-- name: similar_images
-- The :k images nearest by cosine distance to image :image_id in embedding model :model_id, with current labels.
-- psql: \set image_id 42 \set k 20 \set model_id 1 then \i sql/queries/similar_images.sql
SELECT e.image_id,
       e.embedding <=> q.embedding AS cosine_distance,
       l.taxon,
       l.status,
       i.original_path
  FROM embeddings q
  JOIN embeddings e ON e.model_id = q.model_id AND e.image_id <> q.image_id
  JOIN images i ON i.id = e.image_id
  LEFT JOIN current_labels l ON l.image_id = e.image_id
 WHERE q.model_id = :model_id AND q.image_id = :image_id
 ORDER BY e.embedding <=> q.embedding
 LIMIT :k;
