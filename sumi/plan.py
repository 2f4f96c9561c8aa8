"""``sumi plan``: memory, layout, step time and MFU of a training run on a cluster, from arithmetic alone.

Notation (per GPU unless said): P parameters (all), P_b one block's, L blocks, d hidden, h / k query / key-value
heads of width e, i SwiGLU width, V vocabulary, S sequence, T = micro-batch · S tokens, n ranks a parameter is
sharded over. Bytes: a = activation bytes (2 in bf16, 4 in fp32).

Memory (FSDP2 with bf16 parameters and fp32 master weights, gradients and AdamW state; DCP and NCCL buffers not
counted):
    parameters 4P/n + gradients 4P/n + AdamW 8P/n
    + all-gathered bf16 units: the root (embedding + head + final norm, kept for the step) and two blocks
      (the current one and the prefetched next)
    + activations. Per token and block, the tensors autograd keeps (counted with saved-tensor hooks):
      2 RMSNorms (fp32 copy + normalised + output: 4d + 2ad each), q and the attention output (2a·h·e), K and V
      with the sink slot (2a·k·e), log-sum-exp (4h), SwiGLU gate, SiLU, up, product (4a·i). Head: the final
      norm, the logits in a and in fp32 for the loss, and in backward the fp32 logit gradient.
      Full checkpointing keeps each block's input (a·d) and recomputes one block at a time; selective keeps the
      matmul and attention outputs and recomputes the norms and elementwise ops.
Time: model FLOPs = 6·(non-embedding params + head)·tokens + 12·L·S·h·e·tokens (attention scores and values);
checkpointing adds the recomputed forward (2·… for full, the elementwise part is free). Compute time =
FLOPs / (peak · matmul efficiency). FSDP traffic per micro-batch: all-gather bf16 parameters in forward and again
in backward, reduce-scatter fp32 gradients = 8·P·(n−1)/n bytes per rank, over the interconnect of the shard
group (NVLink within a node, the network across); HSDP adds an all-reduce of the fp32 gradient shard across
replicas (2·4P/n·(r−1)/r). Communication overlaps compute (FSDP2 prefetches), so a micro-batch takes the longer
of the two. MFU = model FLOPs / (step time · peak).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from sumi.config import SumiConfig
from sumi.errors import ConfigError

GIB = 2 ** 30
MEMORY_HEADROOM = 0.9
"""Plan to fill at most this share of GPU memory (allocator fragmentation, NCCL and DCP buffers)."""
AC_MODES = ("none", "selective", "full")


@dataclass(frozen=True)
class Cluster:
    """The machines: counts, memory, peak bf16 FLOP/s and bandwidths (GB/s per GPU, one direction)."""

    gpus: int = 8
    gpus_per_node: int = 8
    memory_gib: float = 80.0
    peak_tflops: float = 989.0
    """Dense bf16 peak per GPU (H100 SXM: 989)."""
    intra_node_gbps: float = 450.0
    """Per-GPU bandwidth inside a node (H100 NVLink 4: 450 GB/s per direction)."""
    inter_node_gbps: float = 50.0
    """Per-GPU bandwidth across nodes (one 400 Gb/s NIC per GPU = 50 GB/s)."""
    matmul_efficiency: float = 0.5
    """Share of the peak that a training step's FLOPs reach on a GPU when not waiting for communication (an
    assumption: matmuls alone reach 0.6–0.8 on H100, the elementwise ops, attention and launch gaps cost the
    rest). Not measured by sumi: no GPU has run it yet."""

    def __post_init__(self) -> None:
        for name in ("gpus", "gpus_per_node", "memory_gib", "peak_tflops", "intra_node_gbps", "inter_node_gbps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"cluster {name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.matmul_efficiency <= 1:
            raise ConfigError(f"matmul efficiency must lie in (0, 1], got {self.matmul_efficiency}")


@dataclass(frozen=True)
class Counts:
    """Parameter counts the formulas need."""

    total: int
    block: int
    root: int
    """Embedding + head + final norm (FSDP2's root unit)."""
    matmul: int
    """Non-embedding matmul weights + head (the 6N of the FLOP count)."""

    @staticmethod
    def of(c: SumiConfig) -> Counts:
        d, e = c.hidden_size, c.resolved_head_dim
        attn = d * e * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
        block = attn + 3 * d * c.intermediate_size + 2 * d
        head = 0 if c.tie_word_embeddings else c.vocab_size * d
        root = c.vocab_size * d + head + d
        return Counts(total=block * c.num_hidden_layers + root, block=block, root=root,
                      matmul=(attn + 3 * d * c.intermediate_size) * c.num_hidden_layers + c.vocab_size * d)


def activation_bytes_per_token(c: SumiConfig, seq_len: int, act_bytes: int, ac: str, tp: int = 1) -> dict:
    """Saved-activation bytes per token: ``blocks`` (all layers), ``head`` (norm + logits + loss) and
    ``backward`` (the transient fp32 logit gradient plus one recomputed block under checkpointing)."""
    d, e, a = c.hidden_size, c.resolved_head_dim, act_bytes
    h, k, i = c.num_attention_heads / tp, c.num_key_value_heads / tp, c.intermediate_size / tp
    norm = 4 * d + 2 * a * d + 4
    block = 2 * norm + 2 * a * h * e + 2 * a * k * e * (seq_len + 1) / seq_len + 4 * h + 4 * a * i
    matmul_outputs = a * (h * e + 2 * k * e + d + 2 * i + d) + a * h * e + 4 * h
    kept = {"none": block, "selective": matmul_outputs + a * d, "full": a * d}[ac]
    # The loss keeps fp32 logits; the model's output keeps its own (bf16) logits alive too; ~16 fp32 per-token
    # loss terms. The loss's backward, the first thing backward runs (every activation still alive), holds
    # x̂, a = logits + shift, the keep mask and the fp32 gradient next to the saved logits: 17·V bytes per token
    # at its peak (measured on CPU, bench/plan_memory.py), plus the gradient's cast to bf16 logits.
    low_precision_logits = 0 if a == 4 else a * c.vocab_size
    head = norm + 4 * c.vocab_size + low_precision_logits + 64
    loss_backward = 17 * c.vocab_size + low_precision_logits
    # Later in backward, checkpointing recomputes one block while the head's tensors are gone.
    recompute = 0.0 if ac == "none" else block
    return {"blocks": kept * c.num_hidden_layers, "head": head,
            "backward": max(loss_backward, recompute - head)}


def model_flops_per_token(c: SumiConfig, seq_len: int) -> float:
    """6·(matmul parameters) + attention (QK^T and PV: 12·L·S·h·e), per token, forward + backward."""
    return 6 * Counts.of(c).matmul + 12 * c.num_hidden_layers * seq_len * c.num_attention_heads * c.resolved_head_dim


@dataclass(frozen=True)
class Plan:
    """One layout's numbers (per GPU unless the name says otherwise)."""

    replicate: int
    shard: int
    tensor: int
    micro_batch: int
    grad_accum: int
    activation_checkpointing: str
    memory_gib: dict
    compute_s: float
    comm_s: float
    step_s: float
    mfu: float
    tokens_per_s: float
    tokens_per_day: float
    fits: bool

    def to_dict(self) -> dict:
        return asdict(self)


def single_process_peak_bytes(c: SumiConfig, seq_len: int, batch: int, *, act_bytes: int = 4,
                              ac: str = "none") -> float:
    """Peak memory of one fp32 process (no sharding) in steady state: max(forward end + logit gradient with
    parameters and AdamW state resident, the optimizer step with gradients too). Checked against measured
    peaks of real CPU runs (``tests/test_plan.py``)."""
    p = Counts.of(c).total
    act = activation_bytes_per_token(c, seq_len, act_bytes, ac)
    tokens = batch * seq_len
    backward_start = 12 * p + tokens * (act["blocks"] + act["head"] + act["backward"])
    return max(backward_start, 16 * p)


def plan_layout(c: SumiConfig, seq_len: int, global_batch: int, cluster: Cluster, *, replicate: int, tensor: int,
                micro_batch: int, ac: str) -> Plan:
    """Numbers for one layout (world = replicate × shard × tensor)."""
    shard = cluster.gpus // (replicate * tensor)
    data = replicate * shard
    n = shard * tensor  # a parameter is split over its shard group and its TP group
    counts = Counts.of(c)
    gib = {
        "parameters": 4 * counts.total / n / GIB,
        "gradients": 4 * counts.total / n / GIB,
        "optimizer": 8 * counts.total / n / GIB,
        "gathered_bf16": 2 * (counts.root + 2 * counts.block) / tensor / GIB,
    }
    act = activation_bytes_per_token(c, seq_len, 2, ac, tensor)
    tokens = micro_batch * seq_len
    seq_share = 1 / tensor  # sequence-parallel residual stream; the gathered matmul inputs are not split
    gib["activations"] = tokens * (act["blocks"] + act["head"] * seq_share) / GIB
    gib["activations_no_checkpointing"] = tokens * activation_bytes_per_token(c, seq_len, 2, "none", tensor)[
        "blocks"] / GIB
    gib["activations_full_checkpointing"] = tokens * activation_bytes_per_token(c, seq_len, 2, "full", tensor)[
        "blocks"] / GIB
    gib["backward_transient"] = tokens * act["backward"] / GIB
    gib["total"] = sum(gib[k] for k in ("parameters", "gradients", "optimizer", "gathered_bf16", "activations",
                                        "backward_transient"))
    grad_accum = global_batch // (data * micro_batch)
    flops = model_flops_per_token(c, seq_len) * tokens
    recompute = {"none": 0.0, "selective": 0.05, "full": 1 / 3}[ac]  # forward share of 6N recomputed
    compute = flops * (1 + recompute) / (cluster.peak_tflops * 1e12 * cluster.matmul_efficiency)
    shard_bw = cluster.intra_node_gbps if shard * tensor <= cluster.gpus_per_node else cluster.inter_node_gbps
    p_rank = counts.total / tensor
    comm = 8 * p_rank * (shard - 1) / shard / (shard_bw * 1e9) if shard > 1 else 0.0
    if replicate > 1:
        comm += 2 * 4 * p_rank / shard * (replicate - 1) / replicate / (cluster.inter_node_gbps * 1e9)
    if tensor > 1:  # per block: 2 all-gathers + 2 reduce-scatters of the activations, forward and backward
        tp_bytes = 8 * c.num_hidden_layers * tokens * c.hidden_size * 2 * (tensor - 1) / tensor
        compute += tp_bytes / (cluster.intra_node_gbps * 1e9)  # on the critical path (not overlapped)
    micro_s = max(compute, comm)
    step_s = micro_s * grad_accum
    tokens_per_s = global_batch * seq_len / step_s
    mfu = model_flops_per_token(c, seq_len) * tokens_per_s / cluster.gpus / (cluster.peak_tflops * 1e12)
    return Plan(replicate=replicate, shard=shard, tensor=tensor, micro_batch=micro_batch, grad_accum=grad_accum,
                activation_checkpointing=ac, memory_gib={k: round(v, 2) for k, v in gib.items()},
                compute_s=compute * grad_accum, comm_s=comm * grad_accum, step_s=step_s, mfu=mfu,
                tokens_per_s=tokens_per_s, tokens_per_day=tokens_per_s * 86400,
                fits=gib["total"] <= MEMORY_HEADROOM * cluster.memory_gib)


def candidate_layouts(c: SumiConfig, global_batch: int, cluster: Cluster):
    """(replicate, tensor, micro_batch, ac) tuples that divide the cluster and the global batch."""
    g = cluster.gpus
    for tensor in (1, 2, 4, 8):
        if tensor > cluster.gpus_per_node or g % tensor or c.num_key_value_heads % tensor \
                or c.num_attention_heads % tensor or c.intermediate_size % tensor:
            continue
        # FSDP2 over every data-parallel rank, or HSDP with one shard group per node.
        for replicate in sorted({1, max(1, g // cluster.gpus_per_node)}):
            if g % (replicate * tensor) or (replicate > 1 and tensor > cluster.gpus_per_node):
                continue
            data = g // tensor
            for micro in (1, 2, 4, 8, 16, 32):
                if global_batch % (data * micro):
                    continue
                for ac in AC_MODES:
                    yield replicate, tensor, micro, ac


def plan(c: SumiConfig, seq_len: int, global_batch: int, cluster: Cluster) -> tuple[Plan, list[Plan]]:
    """The recommended layout (fastest that fits; ties → less checkpointing, fewer TP ranks) and all candidates."""
    if global_batch < 1 or seq_len < 1:
        raise ConfigError(f"global batch and sequence length must be >= 1, got {global_batch}, {seq_len}")
    plans = [plan_layout(c, seq_len, global_batch, cluster, replicate=r, tensor=t, micro_batch=m, ac=ac)
             for r, t, m, ac in candidate_layouts(c, global_batch, cluster)]
    fitting = [p for p in plans if p.fits]
    if not plans:
        raise ConfigError(f"no layout divides {cluster.gpus} GPUs and global batch {global_batch}; use a global "
                          "batch that is a multiple of the data-parallel ranks")
    if not fitting:
        smallest = min(plans, key=lambda p: p.memory_gib["total"])
        raise ConfigError(f"no layout fits {cluster.memory_gib} GiB per GPU: the smallest needs "
                          f"{smallest.memory_gib['total']:.1f} GiB; add GPUs or memory, or shorten the sequence")
    order = {"none": 0, "selective": 1, "full": 2}
    best = min(fitting, key=lambda p: (round(p.step_s, 6), p.tensor, order[p.activation_checkpointing],
                                       -p.micro_batch))
    return best, plans


def gpu_hours(best: Plan, cluster: Cluster, tokens: float) -> float:
    """GPU-hours to train on ``tokens`` at the plan's rate."""
    return tokens / best.tokens_per_s * cluster.gpus / 3600


def describe(c: SumiConfig, seq_len: int, global_batch: int, cluster: Cluster, best: Plan,
             tokens: float | None = None) -> list[str]:
    """Human-readable lines for the CLI."""
    m = best.memory_gib
    counts = Counts.of(c)
    lines = [
        f"model        {counts.total / 1e9:.2f}B parameters ({c.num_hidden_layers} layers, d {c.hidden_size}, "
        f"heads {c.num_attention_heads}/{c.num_key_value_heads}, vocab {c.vocab_size}); seq {seq_len}, "
        f"global batch {global_batch} ({global_batch * seq_len / 1e6:.2f}M tokens)",
        f"cluster      {cluster.gpus} GPUs ({cluster.gpus_per_node}/node), {cluster.memory_gib:g} GiB, "
        f"{cluster.peak_tflops:g} TFLOP/s bf16, {cluster.intra_node_gbps:g} GB/s in-node, "
        f"{cluster.inter_node_gbps:g} GB/s across; matmul efficiency {cluster.matmul_efficiency:g} (assumed)",
        f"layout       replicate {best.replicate} x shard {best.shard} x tensor {best.tensor}"
        f" ({'HSDP' if best.replicate > 1 else 'FSDP2'}), micro-batch {best.micro_batch} x grad-accum "
        f"{best.grad_accum}, activation checkpointing {best.activation_checkpointing}",
        f"             training.parallelism=fsdp training.data_parallel_replicate={best.replicate} "
        f"training.tensor_parallel={best.tensor} training.micro_batch_size={best.micro_batch} "
        f"training.activation_checkpointing={str(best.activation_checkpointing != 'none').lower()}"
        + (f" training.activation_checkpointing_mode={best.activation_checkpointing}"
           if best.activation_checkpointing != "none" else ""),
        f"memory/GPU   parameters {m['parameters']:.2f} + gradients {m['gradients']:.2f} + AdamW "
        f"{m['optimizer']:.2f} + gathered bf16 {m['gathered_bf16']:.2f} + activations {m['activations']:.2f} + "
        f"backward {m['backward_transient']:.2f} = {m['total']:.2f} GiB",
        f"             activations without checkpointing {m['activations_no_checkpointing']:.2f} GiB, "
        f"with full checkpointing {m['activations_full_checkpointing']:.2f} GiB",
        f"step         {best.step_s:.2f} s (compute {best.compute_s:.2f} s, communication {best.comm_s:.2f} s, "
        f"overlapped); MFU {best.mfu:.1%}",
        f"throughput   {best.tokens_per_s / 1e3:,.0f}k tokens/s = {best.tokens_per_s / cluster.gpus:,.0f} "
        f"tokens/s/GPU; {best.tokens_per_day / 1e9:,.1f}B tokens/day",
    ]
    if tokens:
        hours = gpu_hours(best, cluster, tokens)
        lines.append(f"budget       {tokens / 1e12:g}T tokens: {hours:,.0f} GPU-hours, "
                     f"{hours / cluster.gpus / 24:.1f} days on {cluster.gpus} GPUs")
    return lines


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an n×n @ n×n matmul on this process's threads (the CPU benchmarks' and the demo's peak)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9
