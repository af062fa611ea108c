"""Embedding runs: registering a model's space, finding images without vectors, writing vectors."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
import torch
from sqlalchemy.orm import Session, sessionmaker

from plankton_db.embedding import DEFAULT_MODEL, Encoder, Preprocess
from plankton_db.errors import ImageRejected, UnknownImage, UnknownModel
from plankton_db.models import EmbeddingModel
from plankton_db.pg import raw_connection
from plankton_db.store import ContentStore


@dataclass(frozen=True)
class ModelRow:
    """The registered facts about an embedding space."""

    id: int
    name: str
    arch: str
    weights_sha256: str
    dim: int
    preprocess: dict
    params: dict


def get_model(session: Session, name: str) -> ModelRow | None:
    """The registered model with this name, if any."""
    row = session.scalar(sa.select(EmbeddingModel).where(EmbeddingModel.name == name))
    if row is None:
        return None
    return ModelRow(row.id, row.name, row.arch, row.weights_sha256, row.dim, dict(row.preprocess), dict(row.params))


def require_model(session: Session, name: str | None) -> ModelRow:
    """The model with this name (default: the only or the default one), or UnknownModel."""
    if name is None:
        names = list(session.scalars(sa.select(EmbeddingModel.name).order_by(EmbeddingModel.id)))
        if not names:
            raise UnknownModel("no embeddings yet: run `plankton embed` first")
        name = DEFAULT_MODEL if DEFAULT_MODEL in names or len(names) != 1 else names[0]
    row = get_model(session, name)
    if row is None:
        known = ", ".join(session.scalars(sa.select(EmbeddingModel.name).order_by(EmbeddingModel.id))) or "none"
        raise UnknownModel(f"unknown model {name!r} (registered: {known})")
    return row


def register_model(session: Session, encoder: Encoder, *, params: dict | None = None) -> ModelRow:
    """Record the encoder's embedding space, or return the existing record if it is the same space."""
    spec = encoder.spec
    existing = get_model(session, spec.name)
    if existing is not None:
        if (existing.arch, existing.weights_sha256, existing.dim) != (spec.arch, spec.weights_sha256, spec.dim):
            raise UnknownModel(
                f"model name {spec.name!r} is already registered with other weights "
                f"(sha256 {existing.weights_sha256[:12]}…, loaded {spec.weights_sha256[:12]}…); choose another name"
            )
        return existing
    row = EmbeddingModel(
        name=spec.name,
        arch=spec.arch,
        weights_sha256=spec.weights_sha256,
        dim=spec.dim,
        preprocess=spec.preprocess.to_dict(),
        params=params or {},
    )
    session.add(row)
    session.flush()
    return get_model(session, spec.name)  # type: ignore[return-value]


def load_encoder(
    session: Session,
    name: str | None = None,
    *,
    checkpoint: str | None = None,
    device: str = "auto",
    store: ContentStore | None = None,
) -> tuple[Encoder, ModelRow]:
    """Load the encoder for a model name, reusing the stored preprocessing when it is registered.

    A fine-tuned model's checkpoint is looked up in `store` by its sha256 first, so a store that was moved,
    or restored from a backup into another PLANKTON_HOME, still loads; the recorded path is the fallback.
    """
    name = name or DEFAULT_MODEL
    row = get_model(session, name)
    if row is None:
        encoder = Encoder.load(name, checkpoint=checkpoint, device=device)
        return encoder, register_model(session, encoder, params={"checkpoint": str(checkpoint)} if checkpoint else {})
    checkpoint = checkpoint or _checkpoint_path(row, store)
    encoder = Encoder.load(row.arch, checkpoint=checkpoint, device=device, preprocess=Preprocess.from_dict(row.preprocess))
    encoder.spec = dataclasses.replace(encoder.spec, name=row.name)
    if encoder.spec.weights_sha256 != row.weights_sha256:
        raise UnknownModel(
            f"the weights loaded for {row.name!r} (sha256 {encoder.spec.weights_sha256[:12]}…) are not the ones "
            f"its embeddings were made with ({row.weights_sha256[:12]}…)"
        )
    return encoder, row


def _checkpoint_path(row: ModelRow, store: ContentStore | None) -> str | None:
    sha = row.params.get("checkpoint_sha256")
    if store is not None and sha and store.path_for(sha).is_file():
        return str(store.path_for(sha))
    return row.params.get("checkpoint")


def pending_images(session: Session, model_id: int, limit: int | None = None) -> list[tuple[int, str]]:
    """(image id, sha256) of images that have no embedding for the model, oldest first."""
    q = sa.text(
        """
        SELECT i.id, i.sha256 FROM images i
         WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = :m AND e.image_id = i.id)
         ORDER BY i.id
        """
        + (" LIMIT :limit" if limit else "")
    )
    return [(r[0], r[1]) for r in session.execute(q, {"m": model_id, "limit": limit})]


def write_embeddings(session: Session, model_id: int, image_ids: Sequence[int], vectors: np.ndarray) -> int:
    """Write vectors with binary COPY through a staging table; existing rows are kept. Returns rows added."""
    if len(image_ids) != len(vectors):
        raise ValueError(f"{len(image_ids)} ids but {len(vectors)} vectors")
    if not len(image_ids):
        return 0
    raw = raw_connection(session)
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS embeddings_in "
            "(model_id int, image_id bigint, embedding vector) ON COMMIT DELETE ROWS"
        )
        with cur.copy("COPY embeddings_in (model_id, image_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "int8", "vector"])
            for image_id, vec in zip(image_ids, vectors, strict=True):
                copy.write_row((model_id, int(image_id), np.asarray(vec, dtype=np.float32)))
        # Concurrent embedders may have written some of these already; theirs are equally valid.
        cur.execute(
            "INSERT INTO embeddings (model_id, image_id, embedding) "
            "SELECT model_id, image_id, embedding FROM embeddings_in ON CONFLICT DO NOTHING"
        )
        added = cur.rowcount
        cur.execute("TRUNCATE embeddings_in")
    return added


class StoreImages(torch.utils.data.Dataset):
    """Images read from the content store and preprocessed; failures come back as error strings."""

    def __init__(self, store: ContentStore, items: Sequence[tuple[int, str]], preprocess: Preprocess) -> None:
        self.store = store
        self.items = list(items)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        image_id, sha = self.items[i]
        try:
            return image_id, self.preprocess(self.store.read_image(sha)), None
        except (ImageRejected, UnknownImage, OSError) as exc:
            return image_id, None, str(exc)


def collate(batch: list[tuple[int, torch.Tensor | None, str | None]]):
    """Stack the good tensors and keep the failures aside."""
    good = [(i, t) for i, t, e in batch if t is not None]
    failed = [(i, e) for i, t, e in batch if t is None]
    ids = [i for i, _ in good]
    tensor = torch.stack([t for _, t in good]) if good else torch.empty(0)
    return ids, tensor, failed


def make_loader(dataset: StoreImages, *, batch_size: int, workers: int, pin_memory: bool):
    """A DataLoader that decodes in worker processes while the model runs."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


@dataclass
class EmbedSummary:
    """What an embed run did."""

    model: str
    embedded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Throughput over the whole run, decoding and writing included."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_missing(
    Session: sessionmaker[Session],
    store: ContentStore,
    encoder: Encoder,
    model_id: int,
    *,
    batch_size: int = 64,
    workers: int = 1,
    on_pending: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> EmbedSummary:
    """Embed every image without a vector for this model; no transaction stays open while the model runs."""
    with Session() as session:
        items = pending_images(session, model_id)
    if on_pending:
        on_pending(len(items))
    summary = EmbedSummary(model=encoder.spec.name)
    if not items:
        return summary
    loader = make_loader(
        StoreImages(store, items, encoder.spec.preprocess),
        batch_size=batch_size,
        workers=workers,
        pin_memory=encoder.device.type == "cuda",
    )
    start = time.perf_counter()
    for ids, tensor, failed in loader:
        summary.failed.extend(failed)
        if ids:
            vectors = encoder.encode_tensors(tensor)
            with Session.begin() as session:
                summary.embedded += write_embeddings(session, model_id, ids, vectors)
        if on_progress:
            on_progress(len(ids) + len(failed))
    summary.seconds = time.perf_counter() - start
    return summary
