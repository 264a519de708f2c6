# Usage: PYTHONPATH=. python bpb_check.py DATA_DIR RUN_DIR
# val_bpb with packing: the same windows, every target scored, the loss of a packed window = the sum of its
# documents scored alone (the context cut at each end-of-text token). Run on a trained fox_pro run.
import glob, json, math, sys
import numpy as np, torch
import torch.nn.functional as F
from xforget.train.loading import load_trained
from xforget.models.packing import PackedDocuments
from xforget.data import val_windows
torch.set_num_threads(1)
d = sys.argv[1]  # the prepared data directory
meta = json.load(open(f"{d}/meta.json")); eot = meta["eot_id"]
val = torch.from_numpy(np.fromfile(f"{d}/val.bin", dtype=np.uint16).astype(np.int64))
run = sys.argv[2]  # a finished run directory
net = load_trained(run).model.eval()
L = 4096
wins = val_windows(val, L, 30)
with_b = [w for w in wins if (w[:L] == eot).any()][:3]
worst = 0.0
with torch.no_grad():
    for w in with_b:
        x, y = w[:L], w[1:]
        packed = F.cross_entropy(PackedDocuments(net, eot)(x[None]).float()[0], y, reduction="sum").double()
        cuts = [0] + [int(i) + 1 for i in torch.nonzero(x == eot).flatten()] + [L]
        alone = sum(F.cross_entropy(net(x[a:b][None]).float()[0], y[a:b], reduction="sum").double()
                    for a, b in zip(cuts[:-1], cuts[1:]) if b > a)
        full = F.cross_entropy(net(x[None]).float()[0], y, reduction="sum").double()
        worst = max(worst, abs(packed - alone).item() / L)
        print(f"window with {len(cuts) - 2} boundaries: packed {packed.item() / L:.6f} nats/token, documents alone "
              f"{alone.item() / L:.6f}, unpacked reading {full.item() / L:.6f} ({L} targets each)")
tpb = meta["val"]["tokens"] / meta["val"]["bytes"]
print(f"max |packed - alone| per token {worst:.2e}; tokens per byte {tpb:.6f} "
      f"(val bytes {meta['val']['bytes']} = UTF-8 bytes + one per end-of-text token)")
