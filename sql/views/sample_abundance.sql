-- name: sample_abundance
-- Per sample and taxon: how many images carry the taxon as their current label (all, validated, predicted,
-- dubious) and its share of the sample's labelled images. Unlabelled images are not counted.
CREATE OR REPLACE VIEW sample_abundance AS
SELECT i.sample,
       l.taxon_id,
       t.name AS taxon,
       count(*) AS n,
       count(*) FILTER (WHERE l.status = 'validated') AS n_validated,
       count(*) FILTER (WHERE l.status = 'predicted') AS n_predicted,
       count(*) FILTER (WHERE l.status = 'dubious') AS n_dubious,
       sum(count(*)) OVER (PARTITION BY i.sample) AS n_labelled_in_sample,
       count(*)::float8 / sum(count(*)) OVER (PARTITION BY i.sample) AS relative_abundance
  FROM images i
  JOIN image_labels l ON l.image_id = i.id
  JOIN taxa t ON t.id = l.taxon_id
 GROUP BY i.sample, l.taxon_id, t.name;
