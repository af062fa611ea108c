-- name: label_counts
-- How many images carry each taxon as their current label, split by status, plus the unlabeled count.
SELECT coalesce(l.taxon, '(unlabeled)') AS taxon,
       count(*) FILTER (WHERE l.status = 'validated') AS validated,
       count(*) FILTER (WHERE l.status = 'predicted') AS predicted,
       count(*) FILTER (WHERE l.status = 'dubious') AS dubious,
       count(*) AS total
  FROM images i
  LEFT JOIN current_labels l ON l.image_id = i.id
 GROUP BY 1
 ORDER BY total DESC, taxon;
