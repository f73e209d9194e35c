"""The arrays of a text-to-video retrieval store (docs/store-format.md, task `retrieval`).

The task class is pipeline/teach_retrieval.py's RetrievalTask; its inspect statistics and report
section are pipeline/retrieval_inspect.py.
"""

from __future__ import annotations

from labelstore.errors import ConfigError
from labelstore.schema import ArraySpec

TASK = "retrieval"  # the store attribute "task"; its entry in labelstore.trainers.tasks.TASKS


def retrieval_arrays(
    *,
    num_videos: int,
    num_captions: int,
    epochs: int,
    num_frames: int,
    mode: str,
    embed_dim: int = 0,
    num_batches: int = 0,
    batch_size: int = 0,
    digests: bool = True,
) -> list[ArraySpec]:
    """Arrays of a text-to-video retrieval store (see docs/store-format.md, task `retrieval`).

    Rows are videos (dimension "video", Nv) and captions (dimension "caption", Nc). `mode`
    is the similarity mode: "embeddings" (video_emb [E,Nv,D] + text_emb [Nc,D]), "dense"
    (similarity [E,Nc,Nv]) or "batches" (batch_captions [E,nb,B] + batch_similarity [E,nb,B,B]).
    """
    E, Nv, Nc, m = epochs, num_videos, num_captions, num_frames
    specs = [
        ArraySpec("sample_id", ("video",), (Nv,), "str", "video table: path relative to the video root (or feature dataset name)", fill_value=""),
        ArraySpec("caption_video", ("caption",), (Nc,), "int32", "row of the caption's video in the video table", fill_value=-1),
        ArraySpec("caption_text", ("caption",), (Nc,), "str", "caption text", fill_value=""),
        ArraySpec("aug/frames/indices", ("epoch", "video", "frames_indices"), (E, Nv, m), "int16",
                  "frame indices of the view (presentation order)", "frame"),
        ArraySpec("frame_scores", ("epoch", "caption", "frame"), (E, Nc, m), "float16",
                  "teacher softmax over the frames of the caption's own video of its frame-text relevance", "probability"),
    ]
    if digests:
        specs.append(ArraySpec("view_digest", ("epoch", "video"), (E, Nv), "uint32",
                               "crc32c of the float32 input tensor [m, ...] the teacher was given"))
    if mode == "embeddings":
        specs += [
            ArraySpec("video_emb", ("epoch", "video", "embed"), (E, Nv, embed_dim), "float16",
                      "teacher video embedding, L2-normalised; s = logit_scale * <text_emb, video_emb>"),
            ArraySpec("text_emb", ("caption", "embed"), (Nc, embed_dim), "float16", "teacher text embedding, L2-normalised"),
        ]
    elif mode == "dense":
        specs.append(ArraySpec("similarity", ("epoch", "caption", "video"), (E, Nc, Nv), "float16",
                               "teacher similarity s(caption, video) (scaled logits)", "logit"))
    elif mode == "batches":
        nb, B = num_batches, batch_size
        specs += [
            ArraySpec("batch_captions", ("epoch", "batch", "slot"), (E, nb, B), "int32",
                      "training batch plan: caption rows of batch b (captions of distinct videos)", fill_value=-1),
            ArraySpec("batch_similarity", ("epoch", "batch", "slot_text", "slot_video"), (E, nb, B, B), "float16",
                      "teacher similarity of batch b: [i, j] = s(caption i, video of caption j)", "logit"),
        ]
    else:
        raise ConfigError(f"retrieval similarity mode must be 'embeddings', 'dense' or 'batches', got {mode!r}")
    return specs
