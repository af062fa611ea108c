-- name: taxon_rollup
-- For every taxon, how many images are labelled with it or with any taxon below it (validated and all), with its path from the root.
SELECT p.path,
       p.rank,
       p.aphia_id,
       count(l.image_id) AS images,
       count(l.image_id) FILTER (WHERE l.status = 'validated') AS validated
  FROM taxon_paths p
  LEFT JOIN taxon_paths below ON p.id = ANY (below.lineage_ids)
  LEFT JOIN image_labels l ON l.taxon_id = below.id
 GROUP BY p.id, p.path, p.rank, p.aphia_id
 ORDER BY p.path;
