-- name: abundance_by_sample
-- Per sample, each taxon's count and relative abundance among the sample's labelled images (view sample_abundance), most abundant first.
SELECT sample, taxon, n, n_validated, n_predicted, n_dubious,
       round(relative_abundance::numeric, 4) AS relative_abundance
  FROM sample_abundance
 ORDER BY sample NULLS LAST, n DESC, taxon;
