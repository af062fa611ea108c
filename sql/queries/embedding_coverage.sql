-- name: embedding_coverage
-- For each embedding model: its architecture, dimension, and how many images have a vector in its space.
SELECT m.id, m.name, m.arch, m.dim,
       count(e.image_id) AS embedded,
       (SELECT count(*) FROM images) AS images
  FROM embedding_models m
  LEFT JOIN embeddings e ON e.model_id = m.id
 GROUP BY m.id
 ORDER BY m.id;
