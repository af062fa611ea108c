-- name: similar_images_function
-- The :k images nearest to image :image_id by cosine distance in model :model_id, through the SQL function similar_images (uses an HNSW index when one exists).
SELECT * FROM similar_images(:image_id, :k, 'cosine', :model_id);
