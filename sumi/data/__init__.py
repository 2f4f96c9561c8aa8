"""Data pipeline: embedded corpus, YAML mixtures, packed memory-mapped shards and a resumable loader.

```python
from sumi.data import MixtureSpec, build_shards, PackedLoader
from sumi.tokenizer import load_tokenizer

spec = MixtureSpec.from_yaml("configs/data/embedded.yaml")
build_shards(spec, load_tokenizer("sumi"), "shards/embedded", seq_len=1184)
loader = PackedLoader("shards/embedded", "train", batch_size=8, seed=0, rank=0, world_size=1)
batch = next(loader)  # torch.LongTensor [8, 1184]
```
"""

from sumi.data.corpus import BUILTIN_SOURCES, iter_documents
from sumi.data.loader import PackedDataset, PackedLoader
from sumi.data.mixture import EMBEDDED_WEIGHTS, MixtureSpec, SourceSpec
from sumi.data.shards import Manifest, ShardError, SplitInfo, build_shards

__all__ = [
    "BUILTIN_SOURCES",
    "EMBEDDED_WEIGHTS",
    "iter_documents",
    "MixtureSpec",
    "SourceSpec",
    "build_shards",
    "Manifest",
    "SplitInfo",
    "ShardError",
    "PackedDataset",
    "PackedLoader",
]
