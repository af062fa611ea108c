-- name: annotator_activity
-- Per annotator and day: how many annotations they made, by status (predictions from models count under their source's annotator name).
SELECT annotator,
       date_trunc('day', created_at)::date AS day,
       count(*) AS annotations,
       count(*) FILTER (WHERE status = 'validated') AS validated,
       count(*) FILTER (WHERE status = 'dubious') AS dubious,
       count(*) FILTER (WHERE status = 'predicted') AS predicted
  FROM annotations
 GROUP BY annotator, day
 ORDER BY day DESC, annotations DESC;
