"""`teach --policy`: a built-in policy name, an op list, or a JSON file of ops -> a Policy.

    crop-flip                                   a built-in name (augment.POLICY_NAMES; exactly today's policy)
    rrc(scale=0.35,1)+flip(p=0.5)               an op list: ops joined by '+', each name(arguments)
    rrc(0.5,1.0)+jitter(0.4,0.4,0.4)            positional arguments fill the op's fields in order
    policy.json                                 [{"op": "rrc", "scale": [0.5, 1]}, {"op": "flip", "p": 0.5}]
                                                (or {"ops": [...]}: the same list under "ops")

An op is named by its `name` (rrc, resize, flip, jitter, selfmix, cutmix, mixup, or the name of a
user op registered with augment.register_op) or by its class name; `module:name` imports the
module defining a user op first (`rrc+my_ops:posterize(p=0.5)`). A field whose default is a pair
(rrc's scale and ratio) takes two values: `scale=0.5,1.0`. Bare values after `key=v` belong to
that key. The parsed ops are recorded in the store's `policy` attribute (Policy.to_json), so a
replay rebuilds exactly them. The geometry op (rrc or resize) is required once, as for any Policy.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re

from labelstore.errors import ConfigError

from .augment import IMAGENET_MEAN, IMAGENET_STD, POLICY_NAMES, Op, Policy, make_policy, registered_ops

_OP = re.compile(r"^\s*((?:[A-Za-z_][\w.]*:)?[A-Za-z_][\w-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def _ops_by_name() -> dict[str, type[Op]]:
    """{op name or class name: class} of every registered op (built-in and user ops)."""
    out: dict[str, type[Op]] = {}
    for cls in registered_ops().values():
        out[cls.__name__] = cls
        f = {f.name: f for f in dataclasses.fields(cls)}.get("name")
        if f is not None and isinstance(f.default, str):
            out[f.default] = cls
    return out


def _fields(cls: type[Op]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and f.name != "name"]


def _value(cls: type[Op], f: dataclasses.Field, raw: list, op: str):
    """The raw value(s) of field f converted to the type of its default."""
    default = f.default
    want = len(default) if isinstance(default, tuple) else 1
    if len(raw) != want:
        raise ConfigError(f"op {op}: {f.name} takes {want} value{'s' if want > 1 else ''}, got {len(raw)} "
                          f"({', '.join(map(str, raw)) or 'none'})")
    try:
        if isinstance(default, bool):
            v = raw[0]
            if isinstance(v, str):
                if v.lower() not in ("true", "false", "1", "0"):
                    raise ConfigError(f"op {op}: {f.name}={v} is not true/false")
                v = v.lower() in ("true", "1")
            return bool(v)
        if isinstance(default, tuple):
            return tuple(float(v) for v in raw)
        if isinstance(default, int):
            return int(raw[0])
        if isinstance(default, float):
            return float(raw[0])
        return raw[0]
    except (TypeError, ValueError):
        kind = "true/false" if isinstance(default, bool) else "a number"
        raise ConfigError(f"op {op}: {f.name}={','.join(map(str, raw))} is not {kind}") from None


def build_op(name: str, positional: list, keywords: dict[str, list]) -> Op:
    """An op instance from its name and raw arguments; ConfigError names the op and the bad argument.

    `module:name` imports `module` first (which registers its ops), e.g. my_ops:posterize(p=0.5)."""
    if ":" in name:
        module, _, name = name.partition(":")
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - ImportError, or whatever the module raises while importing
            raise ConfigError(f"op {module}:{name}: cannot import module {module!r}: {type(e).__name__}: {e}") from e
    ops = _ops_by_name()
    cls = ops.get(name)
    if cls is None:
        known = sorted(n for n, c in ops.items() if n != c.__name__)
        raise ConfigError(f"unknown op {name!r}; known ops: {', '.join(known)} (a user op must be registered with "
                          "labelstore.pipeline.augment.register_op first)")
    fields = _fields(cls)
    by_name = {f.name: f for f in fields}
    args: dict = {}
    i = 0
    for f in fields:  # positional values fill the fields in order (a pair field takes two)
        if i >= len(positional):
            break
        n = len(f.default) if isinstance(f.default, tuple) else 1
        args[f.name] = _value(cls, f, positional[i : i + n], name)
        i += n
    if i < len(positional):
        raise ConfigError(f"op {name}: too many positional values ({', '.join(map(str, positional))}); "
                          f"its arguments are {', '.join(by_name)}")
    for k, raw in keywords.items():
        f = by_name.get(k)
        if f is None:
            raise ConfigError(f"op {name} has no argument {k!r} (its arguments: {', '.join(by_name) or 'none'})")
        if k in args:
            raise ConfigError(f"op {name}: {k} given twice")
        args[k] = _value(cls, f, raw if isinstance(raw, list) else [raw], name)
    try:
        return cls(**args)
    except ConfigError as e:
        raise ConfigError(f"op {name}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"op {name}: {e}") from None


def _split_top(text: str, sep: str) -> list[str]:
    """text split at `sep` outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def parse_op_list(text: str) -> list[Op]:
    """'rrc(scale=0.5,1)+flip(p=0.5)' -> [RandomResizedCrop(scale=(0.5, 1.0)), HorizontalFlip(p=0.5)]."""
    ops = []
    for part in _split_top(text, "+"):
        m = _OP.match(part)
        if not m:
            raise ConfigError(f"cannot read op {part.strip()!r}: write name(arguments), e.g. rrc(scale=0.5,1.0)")
        name, body = m[1], (m[2] or "").strip()
        positional: list = []
        keywords: dict[str, list] = {}
        key = None
        for tok in [t.strip() for t in body.split(",")] if body else []:
            if "=" in tok:
                key, tok = (s.strip() for s in tok.split("=", 1))
                if key in keywords:
                    raise ConfigError(f"op {name}: {key} given twice")
                keywords[key] = []
            if not tok:
                raise ConfigError(f"op {name}: empty value in ({body})")
            (keywords[key] if key is not None else positional).append(tok)
        ops.append(build_op(name, positional, keywords))
    return ops


def _ops_from_json(obj, where: str) -> list[Op]:
    items = obj.get("ops") if isinstance(obj, dict) else obj
    if not isinstance(items, list) or not all(isinstance(o, dict) and isinstance(o.get("op"), str) for o in items):
        raise ConfigError(f"{where}: expected a JSON list of ops like [{{\"op\": \"rrc\", \"scale\": [0.5, 1]}}] "
                          "(or {\"ops\": [...]})")
    out = []
    for o in items:
        kw = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in o.items() if k != "op"}
        out.append(build_op(o["op"], [], kw))
    return out


def parse_policy(spec: str, output_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 crop_scale: tuple[float, float] | None = None) -> Policy:
    """The Policy of a `--policy` value (see the module docstring); errors name --policy and the op.

    crop_scale (--crop-scale) applies to the built-in names only; an op list gives rrc(scale=...)."""
    try:
        if spec in POLICY_NAMES:
            return make_policy(spec, output_size, mean, std, crop_scale=crop_scale or (0.08, 1.0))
        if crop_scale is not None:
            raise ConfigError("--crop-scale applies to the built-in policy names; in an op list give "
                              "rrc(scale=LO,HI)")
        if spec.lower().endswith((".json", ".yaml", ".yml")) or os.path.isfile(spec):
            if not os.path.isfile(spec):
                raise ConfigError(f"policy file {spec!r} does not exist")
            if not spec.lower().endswith(".json"):
                raise ConfigError(f"policy file {spec!r}: only JSON policy files are read (a .json file)")
            try:
                with open(spec, encoding="utf-8") as fh:
                    obj = json.load(fh)
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"policy file {spec!r} is not readable JSON: {e}") from None
            ops = _ops_from_json(obj, f"policy file {spec!r}")
        elif "(" in spec or "+" in spec:
            ops = parse_op_list(spec)
        else:
            ops = parse_op_list(spec) if spec in _ops_by_name() else None
            if ops is None:
                raise ConfigError(f"unknown policy; choose one of {', '.join(POLICY_NAMES)}, an op list such as "
                                  "'rrc(scale=0.35,1)+flip(p=0.5)' or a .json file of ops")
        return Policy(ops=tuple(ops), output_size=tuple(output_size), mean=tuple(mean), std=tuple(std))
    except ConfigError as e:
        raise ConfigError(f"--policy {spec!r}: {e}") from None


def parse_triple(text: str | None, option: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    """'0.5,0.5,0.5' (R,G,B; a value may be a fraction such as 1/255) -> (0.5, 0.5, 0.5); None -> default."""
    if text is None:
        return default
    vals = []
    for tok in text.split(","):
        try:
            num, _, den = tok.strip().partition("/")
            vals.append(float(num) / float(den) if den else float(num))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{option} {text!r}: {tok.strip()!r} is not a number (give R,G,B, e.g. 0.5,0.5,0.5)") \
                from None
    if len(vals) != 3:
        raise ConfigError(f"{option} {text!r}: give 3 values R,G,B (got {len(vals)})")
    return vals[0], vals[1], vals[2]
