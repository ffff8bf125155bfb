"""Cutie's memories: working memory of keys/values in buckets of objects (the first frame of each
bucket permanent, the rest a FIFO or, with long-term memory, consolidated into prototypes),
per-object sensory memory and object memory (running sums of object summaries)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maskml.models.cutie.readout import similarity


def dense_softmax(sim: torch.Tensor) -> torch.Tensor:
    """Full softmax over memory entries of (B, queries, N) similarities."""
    return torch.softmax(sim, dim=-1)


@dataclass
class Bucket:
    """Objects first memorised together share their keys."""

    objects: list[int]
    key: torch.Tensor | None = None  # (B, CK, N)
    shrinkage: torch.Tensor | None = None  # (B, 1, N)
    selection: torch.Tensor | None = None  # (B, CK, N - permanent), long-term only
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # obj -> (B, CV, N)
    permanent: int = 0  # the first `permanent` entries are never removed
    use_count: torch.Tensor | None = None  # (B, N - permanent), long-term only
    life_count: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return 0 if self.key is None else self.key.shape[-1]

    def append(self, key, shrinkage, values, selection, permanent: bool, track_usage: bool) -> None:
        n = key.shape[-1]
        cat = (lambda old, new: new if old is None else torch.cat([new, old] if permanent else [old, new], -1))
        self.key, self.shrinkage = cat(self.key, key), cat(self.shrinkage, shrinkage)
        for obj, value in values.items():
            self.values[obj] = value if obj not in self.values else torch.cat([self.values[obj], value], -1)
        if permanent:
            self.permanent += n
        elif track_usage:
            self.selection = cat(self.selection, selection)
            zeros = key.new_zeros(key.shape[0], n)
            self.use_count = cat(self.use_count, zeros)
            self.life_count = cat(self.life_count, zeros + 1e-7)

    def remove(self, start: int, end: int) -> None:
        """Drop non-permanent entries [start, end) (counted after the permanent ones)."""
        p = self.permanent
        keep = lambda t: torch.cat([t[..., :p + start], t[..., p + end:]], -1)  # noqa: E731
        self.key, self.shrinkage = keep(self.key), keep(self.shrinkage)
        self.values = {obj: keep(v) for obj, v in self.values.items()}
        if self.use_count is not None:
            cut = lambda t: torch.cat([t[..., :start], t[..., end:]], -1)  # noqa: E731
            self.selection, self.use_count, self.life_count = (cut(self.selection), cut(self.use_count),
                                                               cut(self.life_count))


class LongTermStore:
    """Prototypes consolidated from working memory, per bucket."""

    def __init__(self) -> None:
        self.key: dict[int, torch.Tensor] = {}
        self.shrinkage: dict[int, torch.Tensor] = {}
        self.values: dict[int, dict[int, torch.Tensor]] = {}
        self.use_count: dict[int, torch.Tensor] = {}
        self.life_count: dict[int, torch.Tensor] = {}

    def size(self, bucket_id: int) -> int:
        return self.key[bucket_id].shape[-1] if bucket_id in self.key else 0

    def add(self, bucket_id: int, key, shrinkage, values) -> None:
        n = key.shape[-1]
        zeros = key.new_zeros(key.shape[0], n)
        if bucket_id not in self.key:
            self.key[bucket_id], self.shrinkage[bucket_id], self.values[bucket_id] = key, shrinkage, dict(values)
            self.use_count[bucket_id], self.life_count[bucket_id] = zeros, zeros + 1e-7
            return
        self.key[bucket_id] = torch.cat([self.key[bucket_id], key], -1)
        self.shrinkage[bucket_id] = torch.cat([self.shrinkage[bucket_id], shrinkage], -1)
        for obj, v in values.items():
            self.values[bucket_id][obj] = torch.cat([self.values[bucket_id][obj], v], -1)
        self.use_count[bucket_id] = torch.cat([self.use_count[bucket_id], zeros], -1)
        self.life_count[bucket_id] = torch.cat([self.life_count[bucket_id], zeros + 1e-7], -1)

    def keep_most_used(self, bucket_id: int, count: int) -> None:
        usage = self.use_count[bucket_id] / self.life_count[bucket_id]
        survivors = torch.topk(usage, k=count, dim=-1).indices  # (B, count)
        take = lambda t: torch.stack([t[b][..., s] for b, s in enumerate(survivors)])  # noqa: E731
        self.key[bucket_id], self.shrinkage[bucket_id] = take(self.key[bucket_id]), take(self.shrinkage[bucket_id])
        self.values[bucket_id] = {obj: take(v) for obj, v in self.values[bucket_id].items()}
        self.use_count[bucket_id], self.life_count[bucket_id] = (take(self.use_count[bucket_id]),
                                                                 take(self.life_count[bucket_id]))

    def drop_objects(self, keep: set[int]) -> None:
        for bucket_id in list(self.key):
            self.values[bucket_id] = {o: v for o, v in self.values[bucket_id].items() if o in keep}
            if not self.values[bucket_id]:
                for table in (self.key, self.shrinkage, self.values, self.use_count, self.life_count):
                    del table[bucket_id]


class Memory:
    """All of a video's memories, and the rules that read and grow them."""

    def __init__(self, top_k: int, max_mem_frames: int, use_long_term: bool, long_term: dict) -> None:
        self.top_k = top_k
        self.use_long_term = use_long_term
        self.count_usage = long_term["count_usage"]
        frames = long_term["max_mem_frames"] if use_long_term else max_mem_frames
        self.max_frames = frames - 1  # non-permanent frames kept in working memory
        self.min_frames = long_term["min_mem_frames"] - 1
        self.num_prototypes = long_term["num_prototypes"]
        self.max_long_tokens = long_term["max_num_tokens"]
        self.buffer_tokens = long_term["buffer_tokens"]
        self.buckets: dict[int, Bucket] = {}
        self.next_bucket = 0
        self.long = LongTermStore()
        self.sensory: dict[int, torch.Tensor] = {}
        self.object_memory: dict[int, torch.Tensor] = {}

    @property
    def engaged(self) -> bool:
        return bool(self.buckets)

    def read(self, query_key: torch.Tensor, query_selection: torch.Tensor, read_top_k) -> dict[int, torch.Tensor]:
        """Pixel readout of every object in memory: {obj: (B, CV, HW)}. read_top_k: the model's
        readout of one bucket (maskml.models.cutie.readout.read_top_k, or a graph of it on another
        runtime), called with the memory as it is now."""
        qk, qe = query_key.flatten(2), query_selection.flatten(2)
        readout = {}
        for bucket_id, bucket in self.buckets.items():
            long_size = self.long.size(bucket_id) if self.use_long_term else 0
            key, shrinkage, values = bucket.key, bucket.shrinkage, bucket.values
            if long_size:
                key = torch.cat([self.long.key[bucket_id], key], -1)
                shrinkage = torch.cat([self.long.shrinkage[bucket_id], shrinkage], -1)
                values = {o: torch.cat([self.long.values[bucket_id][o], v], -1) for o, v in values.items()}
            # one readout for all objects of the bucket: they share keys, hence indices and weights
            stacked, weights, indices = read_top_k(qk, qe, key, shrinkage,
                                                   torch.cat([values[obj] for obj in bucket.objects], dim=1),
                                                   self.top_k)
            if self.use_long_term:
                self._count_usage(bucket_id, bucket, weights, indices, key.shape[-1], long_size)
            for obj, part in zip(bucket.objects, stacked.chunk(len(bucket.objects), dim=1)):
                readout[obj] = part
        return readout

    def _count_usage(self, bucket_id, bucket, weights, indices, size, long_size) -> None:
        usage = torch.zeros(weights.shape[0], size, device=weights.device).scatter_add_(
            1, indices.flatten(1), weights.flatten(1))  # summed over query pixels
        work = usage[:, long_size + bucket.permanent:]
        if work.shape[-1]:
            bucket.use_count += work
            bucket.life_count += 1
        if long_size and self.count_usage:
            self.long.use_count[bucket_id] += usage[:, :long_size]
            self.long.life_count[bucket_id] += 1

    def add(self, key: torch.Tensor, shrinkage: torch.Tensor, selection: torch.Tensor, values: torch.Tensor,
            summaries: torch.Tensor, objects: list[int]) -> None:
        """One memory frame: key/shrinkage/selection (B, C, h, w); values (B, N, CV, h, w) and object
        summaries (B, N, Q, C + 1) of `objects`. A bucket's first frame is permanent."""
        hw = key.shape[-2] * key.shape[-1]
        key, shrinkage, selection = key.flatten(2), shrinkage.flatten(2), selection.flatten(2)
        for i, obj in enumerate(objects):
            self.object_memory[obj] = (summaries[:, i] if obj not in self.object_memory
                                       else self.object_memory[obj] + summaries[:, i])
        new = [obj for obj in objects if not any(obj in b.objects for b in self.buckets.values())]
        if new:
            self.buckets[self.next_bucket] = Bucket(objects=new)
            self.next_bucket += 1
        for bucket in self.buckets.values():
            written = {obj: values[:, objects.index(obj)].flatten(2) for obj in bucket.objects if obj in objects}
            if written:
                bucket.append(key, shrinkage, written, selection, permanent=bucket.permanent == 0,
                              track_usage=self.use_long_term)
        max_tokens = self.max_frames * hw
        for bucket_id, bucket in self.buckets.items():
            work = bucket.size - bucket.permanent
            if not self.use_long_term:
                if work > max_tokens:
                    bucket.remove(0, work - max_tokens)
            elif work >= max_tokens:
                if self.long.size(bucket_id) >= self.max_long_tokens - self.num_prototypes:
                    self.long.keep_most_used(bucket_id, self.max_long_tokens - self.num_prototypes - self.buffer_tokens)
                self._consolidate(bucket_id, bucket, work - self.min_frames * hw)

    def _consolidate(self, bucket_id: int, bucket: Bucket, count: int) -> None:
        """The `count` oldest non-permanent entries become num_prototypes long-term prototypes: the most
        used keys, with values and shrinkage read out from all candidates by a full softmax."""
        p = bucket.permanent
        key, shrinkage = bucket.key[..., p:p + count], bucket.shrinkage[..., p:p + count]
        selection = bucket.selection[..., :count]
        usage = bucket.use_count[:, :count] / bucket.life_count[:, :count]
        chosen = torch.topk(usage, k=min(self.num_prototypes, count), dim=-1, sorted=True).indices
        proto_key = torch.stack([key[b][:, c] for b, c in enumerate(chosen)])
        proto_selection = torch.stack([selection[b][:, c] for b, c in enumerate(chosen)])
        affinity = dense_softmax(similarity(key, shrinkage, proto_key, proto_selection))  # (B, P, count)
        proto_values = {obj: v[..., p:p + count] @ affinity.transpose(1, 2) for obj, v in bucket.values.items()}
        proto_shrinkage = shrinkage @ affinity.transpose(1, 2)
        bucket.remove(0, count)
        self.long.add(bucket_id, proto_key, proto_shrinkage, proto_values)

    def sensory_of(self, objects: list[int], like: torch.Tensor, dim: int) -> torch.Tensor:
        """(B, N, dim, h, w) sensory memories of `objects`, zeros for objects not seen before."""
        for obj in objects:
            if obj not in self.sensory:
                self.sensory[obj] = like.new_zeros(like.shape[0], dim, *like.shape[-2:])
        return torch.stack([self.sensory[obj] for obj in objects], dim=1)

    def set_sensory(self, sensory: torch.Tensor, objects: list[int]) -> None:
        for i, obj in enumerate(objects):
            self.sensory[obj] = sensory[:, i]

    def drop_objects(self, keep: list[int]) -> None:
        keep_set = set(keep)
        for bucket_id in list(self.buckets):
            bucket = self.buckets[bucket_id]
            bucket.objects = [o for o in bucket.objects if o in keep_set]
            bucket.values = {o: v for o, v in bucket.values.items() if o in keep_set}
            if not bucket.objects:
                del self.buckets[bucket_id]
        self.long.drop_objects(keep_set)
        self.sensory = {o: s for o, s in self.sensory.items() if o in keep_set}
        self.object_memory = {o: s for o, s in self.object_memory.items() if o in keep_set}
