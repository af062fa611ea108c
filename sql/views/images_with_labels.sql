-- name: images_with_labels
-- One row per image: its typed EcoTaxa-style metadata, the free metadata jsonb, and its current label (if any).
CREATE OR REPLACE VIEW images_with_labels AS
SELECT i.id AS image_id,
       i.sha256,
       i.original_name,
       i.original_path,
       i.width,
       i.height,
       i.format,
       i.sample,
       i.instrument,
       i.latitude,
       i.longitude,
       i.depth_min,
       i.depth_max,
       i.captured_at,
       i.ingested_at,
       i.metadata,
       l.taxon_id,
       t.name AS taxon,
       t.rank AS taxon_rank,
       t.aphia_id,
       l.status,
       a.annotator,
       a.source AS label_source,
       a.score AS label_score,
       l.annotated_at
  FROM images i
  LEFT JOIN image_labels l ON l.image_id = i.id
  LEFT JOIN taxa t ON t.id = l.taxon_id
  LEFT JOIN annotations a ON a.id = l.annotation_id;
