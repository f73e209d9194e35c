"""A user-registered op is recorded by the teacher stage and replays in a new process (issue 10 "Open ops")."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import NUM_CLASSES

USER_OP = textwrap.dedent('''
    from dataclasses import dataclass

    import numpy as np

    from labelstore.pipeline import rng
    from labelstore.pipeline.augment import Op, register_op


    @register_op
    @dataclass(frozen=True)
    class Posterize(Op):
        """Keep the top `bits` bits of every channel value of a view with probability p."""

        p: float = 0.5
        name: str = "posterize"

        def param_spec(self):
            return {"bits": ("uint8", ())}

        def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None):
            u = rng.uniform(seed, epoch, np.asarray(ids, np.int64), self._stream("bits"), 2)
            return {"bits": np.where(u[:, 0] < self.p, 2 + (u[:, 1] * 4).astype(np.uint8), 8).astype(np.uint8)}

        def apply_u8(self, view, params):
            view &= np.uint8((0xFF << (8 - int(params["bits"]))) & 0xFF)
''')

REPLAY = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    if sys.argv[4] == "register":
        import my_ops  # noqa: F401  (registers Posterize again in this process)
    import labelstore
    from labelstore.pipeline.images import ImageFolder
    from labelstore.pipeline.verify import verify
    r = verify(labelstore.open(sys.argv[2]), ImageFolder(sys.argv[3]), samples=40)
    print("digests", r["digests_equal"], r["digests_checked"])
''')


def test_user_op_recorded_and_replayed_in_new_process(tmp_path, source, shapes_dir, teacher):
    (tmp_path / "my_ops.py").write_text(USER_OP)
    sys.path.insert(0, str(tmp_path))
    try:
        import my_ops
    finally:
        sys.path.remove(str(tmp_path))
    from labelstore.pipeline.augment import HorizontalFlip, Policy, RandomResizedCrop
    from labelstore.pipeline.teach import TeachConfig, teach

    policy = Policy((RandomResizedCrop(), HorizontalFlip(), my_ops.Posterize()), (16, 16))
    model, info = teacher
    out = tmp_path / "s.zarr"
    teach(str(out), source, model, policy, TeachConfig(epochs=2, top_k=3, batch_size=8, shard_rows=16, chunk_rows=8),
          teacher_info=info, num_classes=NUM_CLASSES, device="cpu", progress=False)
    import labelstore

    bits = labelstore.open(out).read(0)["posterize/bits"]
    assert (bits < 8).any() and (bits == 8).any()  # recorded, applied to some views only
    script = tmp_path / "replay.py"
    script.write_text(REPLAY)
    run = [sys.executable, str(script), str(tmp_path), str(out), str(shapes_dir)]
    ok = subprocess.run(run + ["register"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "digests 40 40" in ok.stdout
    bad = subprocess.run(run + ["none"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "unknown op type 'Posterize'" in bad.stderr and "register_op" in bad.stderr
