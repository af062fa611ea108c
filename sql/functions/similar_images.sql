-- name: similar_images
-- The k images nearest to image `query_image_id` by `metric` (cosine or l2) in one embedding model's space.
-- The model defaults to the lowest-numbered model that has a vector for the query image. When the model has
-- an HNSW index for the metric (`plankton index build`), the search uses it (approximate, fast); otherwise
-- it is an exact scan. Call it from any client: SELECT * FROM similar_images(42, 20, 'cosine');
CREATE OR REPLACE FUNCTION similar_images(query_image_id bigint, k integer DEFAULT 10,
                                          metric text DEFAULT 'cosine', model integer DEFAULT NULL)
RETURNS TABLE (image_id bigint, distance double precision, taxon text, status text, sample text,
               original_path text)
LANGUAGE plpgsql AS $$
DECLARE
    op text;
    m integer := model;
    dims integer;
    storage text;
    expr text;
    qvec vector;
BEGIN
    op := CASE metric WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' END;
    IF op IS NULL THEN
        RAISE EXCEPTION 'unknown metric %; choose cosine or l2', quote_literal(metric)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k IS NULL OR k < 1 OR k > 10000 THEN
        RAISE EXCEPTION 'k must be between 1 and 10000, got %', coalesce(k::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM images i WHERE i.id = query_image_id) THEN
        RAISE EXCEPTION 'no image with id %', query_image_id USING ERRCODE = 'no_data_found';
    END IF;
    IF m IS NULL THEN
        SELECT min(e.model_id) INTO m FROM embeddings e WHERE e.image_id = query_image_id;
    END IF;
    IF m IS NULL OR NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = query_image_id AND e.model_id = m) THEN
        RAISE EXCEPTION 'image % has no embedding%', query_image_id,
              CASE WHEN m IS NULL THEN '' ELSE ' for model ' || m END USING ERRCODE = 'no_data_found';
    END IF;
    SELECT em.dim INTO dims FROM embedding_models em WHERE em.id = m;
    -- A parameter, not a join: an index can only order by distance to a value fixed for the whole scan.
    SELECT e.embedding INTO qvec FROM embeddings e WHERE e.image_id = query_image_id AND e.model_id = m;
    -- Index names follow plankton_db/indexes.py: ann_m<model>_hnsw_<metric>_<storage>; halfvec first.
    SELECT s INTO storage
      FROM unnest(ARRAY['halfvec', 'vector']) WITH ORDINALITY AS x(s, o)
      JOIN pg_class c ON c.relname = format('ann_m%s_hnsw_%s_%s', m, metric, x.s) AND c.relkind = 'i'
      JOIN pg_index ix ON ix.indexrelid = c.oid AND ix.indisvalid
     ORDER BY x.o
     LIMIT 1;
    IF storage IS NULL THEN
        expr := format('e.embedding %s $3', op);
    ELSE
        -- The same cast as the partial expression index, so the planner can use it; HNSW returns at most
        -- ef_search rows, so widen it (for this transaction only) when k asks for more.
        expr := format('e.embedding::%1$s(%2$s) %3$s $3::%1$s(%2$s)', storage, dims, op);
        PERFORM set_config('hnsw.ef_search',
                           greatest(k + 1, coalesce(current_setting('hnsw.ef_search', true), '40')::int)::text, true);
    END IF;
    RETURN QUERY EXECUTE format(
        $q$
        SELECT r.image_id, r.distance, t.name, l.status::text, i.sample, i.original_path
          FROM (SELECT e.image_id, (e.embedding %1$s $3)::float8 AS distance
                  FROM embeddings e
                 WHERE e.model_id = %2$s
                 ORDER BY %3$s
                 LIMIT $2 + 1) r
          JOIN images i ON i.id = r.image_id
          LEFT JOIN image_labels l ON l.image_id = r.image_id
          LEFT JOIN taxa t ON t.id = l.taxon_id
         WHERE r.image_id <> $1
         ORDER BY r.distance, r.image_id
         LIMIT $2
        $q$, op, m, expr)
    USING query_image_id, k, qvec;
END
$$;
