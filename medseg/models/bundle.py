"""MONAI Model Zoo bundles, run through medseg's own engine without running the bundle's code.

A bundle folder holds configs/inference.json (components as {"_target_": class, ...} with
"@key" references and "$expression" strings, which MONAI's runner evaluates with eval),
configs/metadata.json (input channels, output classes) and models/model.pt (the weights).
medseg reads three parts of the config as data: `network_def` (a class from an allowlist of
MONAI networks, with its keyword arguments), `preprocessing` (an allowlist of MONAI
transforms: loading, channel, orientation, spacing, intensity scaling, foreground crop) and
`inferer` (the sliding window's roi). Expressions are evaluated only within a small grammar:
literals, lists, @references, arithmetic on numbers, comparisons and `a if cond else b`;
anything else is one line naming the key. The weights load with torch's weights_only
unpickler. The scan then goes through medseg's predictor: the bundle's orientation and
spacing, its intensity window as one linear map, Gaussian-weighted sliding windows, and the
probabilities back onto the scan's own grid."""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path

import torch

from medseg.data.network_input import LEGACY_PADDING, ORIENTATIONS, NetworkInput
from medseg.errors import MedsegError, first_line
from medseg.models.medseg_run import MedsegPredictor, files_digest
from medseg.models.options import EngineOptions
from medseg.nets.checkpoint import safe_torch_load

CONFIG, METADATA, WEIGHTS = "configs/inference.json", "configs/metadata.json", "models/model.pt"
# MONAI networks a bundle may name (monai.networks.nets); anything else is refused by name.
NETWORKS = ("SegResNet", "SegResNetDS", "UNet", "BasicUNet", "DynUNet", "SwinUNETR", "UNETR",
            "AttentionUnet")
# Preprocessing transforms medseg reproduces, and those that change nothing it needs (loading,
# channels, types: its reader does them; a foreground crop: background outside it stays).
READ_AS_SETTINGS = ("Orientationd", "Spacingd", "ScaleIntensityRanged")
NO_EFFECT = ("LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "AddChanneld", "CropForegroundd",
             "CastToTyped", "Identityd")


def is_bundle(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


# --- the safe expression grammar --------------------------------------------------------------

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
              ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
              ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
              ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_REFERENCE = re.compile(r"@([A-Za-z_][\w#]*)")


class Config:
    """A bundle's inference.json, whose values are resolved on demand within the grammar."""

    def __init__(self, raw: dict, path: Path):
        self.raw, self.path = raw, path

    def get(self, key: str, seen: tuple[str, ...] = ()):
        """The value at `key` ('a#b#0' for nested entries), references and expressions
        resolved."""
        if key in seen:
            raise MedsegError(f"{self.path}: {key} refers to itself through "
                              f"{' -> '.join(seen)}; the config is circular")
        node = self.raw
        for depth, part in enumerate(key.split("#")):
            if isinstance(node, str):  # a reference or expression on the way: what it gives
                node = self.resolve(node, "#".join(key.split("#")[:depth]), (*seen, key))
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise MedsegError(f"{self.path}: no {key!r} (a reference in "
                                  f"{seen[-1] if seen else 'the config'} names it)") from None
        return self.resolve(node, key, (*seen, key))

    def raw_at(self, key: str) -> list:
        """The list at `key` as written (its items are resolved one by one, when read)."""
        node = self.raw
        for part in key.split("#"):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, list):
            raise MedsegError(f"{self.path}: {key} is not a list of transforms")
        return node

    def resolve(self, value, key: str, seen: tuple[str, ...] = ()):
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{key}#{k}", seen) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{key}#{i}", seen) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        if value.startswith("@") and _REFERENCE.fullmatch(value):
            return self.get(value[1:], seen)
        if value.startswith("$"):
            return self.evaluate(value[1:], key, seen)
        if value.startswith("%"):
            raise MedsegError(f"{self.path}: {key}: {value!r} takes a value from another file; "
                              "medseg reads one config, give the value itself")
        return value

    def evaluate(self, expression: str, key: str, seen: tuple[str, ...]):
        """An expression within the grammar, or one line naming the key."""
        names = {}

        def placeholder(match):
            names[f"_ref{len(names)}"] = match.group(1)
            return f"_ref{len(names) - 1}"

        try:
            tree = ast.parse(_REFERENCE.sub(placeholder, expression), mode="eval")
        except SyntaxError:
            self._refuse(key, expression, "it does not parse")
        return self._value(tree.body, names, key, expression, seen)

    def _value(self, node, names, key, expression, seen):
        def value(child):
            return self._value(child, names, key, expression, seen)

        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool,
                                                                      type(None))):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Name) and node.id in names:
            return self.get(names[node.id], seen)
        if isinstance(node, ast.IfExp):
            return value(node.body) if value(node.test) else value(node.orelse)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if not all(isinstance(v, (int, float)) for v in (left, right)):
                self._refuse(key, expression, "arithmetic on something other than numbers")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.Compare) and all(type(op) in _OPERATORS for op in node.ops):
            left = value(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = value(comparator)
                if not _OPERATORS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):
            values = [value(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        self._refuse(key, expression, f"it needs code ({type(node).__name__})")

    def _refuse(self, key, expression, why):
        raise MedsegError(f"{self.path}: {key}: the expression {expression!r} is not read: "
                          f"{why}; medseg evaluates only literals, lists, @references, "
                          "arithmetic on numbers and 'a if condition else b', never code")


# --- reading a bundle ---------------------------------------------------------------------------

def read_bundle(folder: Path) -> tuple[torch.nn.Module, NetworkInput, dict[int, str]]:
    """The bundle's network (with its weights), what it sees, and its classes."""
    folder = Path(folder)
    config = Config(_read_json(folder / CONFIG), folder / CONFIG)
    labels = _labels(folder)
    network = _network(config, len(labels))
    spec = _network_input(config)
    _load_weights(network, folder)
    return network, spec, labels


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MedsegError(f"{path}: missing; a MONAI bundle holds {CONFIG}, {METADATA} and "
                          f"{WEIGHTS}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise MedsegError(f"{path}: not valid JSON ({first_line(exc)}); fix it there") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{path}: expected a JSON object")
    return data


def _labels(folder: Path) -> dict[int, str]:
    """Classes from metadata.json's network_data_format; one CT channel in."""
    metadata = _read_json(folder / METADATA)
    formats = metadata.get("network_data_format", {})
    image = formats.get("inputs", {}).get("image", {})
    channels, modality = image.get("num_channels", 1), str(image.get("modality", "CT"))
    if channels != 1 or modality.upper() not in ("CT", ""):
        raise MedsegError(f"{folder / METADATA}: the bundle takes {channels} {modality} "
                          "channel(s); medseg segments one CT scan")
    channel_def = formats.get("outputs", {}).get("pred", {}).get("channel_def")
    if not isinstance(channel_def, dict) or not channel_def:
        raise MedsegError(f"{folder / METADATA}: no network_data_format.outputs.pred."
                          "channel_def naming the output classes")
    labels = {int(k): str(v) for k, v in channel_def.items()}
    if sorted(labels) != list(range(len(labels))):
        raise MedsegError(f"{folder / METADATA}: channel_def ids {sorted(labels)} are not "
                          "0..N")
    return labels


def _network(config: Config, classes: int) -> torch.nn.Module:
    import monai.networks.nets as nets

    definition = config.get("network_def")
    target = str(definition.pop("_target_", "")).removeprefix("monai.networks.nets.")
    if target not in NETWORKS:
        raise MedsegError(f"{config.path}: network_def names {target!r}; medseg builds the "
                          f"MONAI networks {', '.join(NETWORKS)}")
    kwargs = {k: v for k, v in definition.items() if not k.startswith("_")}
    try:
        network = getattr(nets, target)(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise MedsegError(f"{config.path}: network_def's arguments do not build a {target} "
                          f"({first_line(exc)})") from None
    out = kwargs.get("out_channels")
    if out is not None and out != classes:
        raise MedsegError(f"{config.path}: network_def has {out} output channels, the "
                          f"metadata's channel_def {classes} classes")
    return network


def _network_input(config: Config) -> NetworkInput:
    """Orientation, spacing and intensity window from the preprocessing transforms, the
    window size from the inferer."""
    # Only what medseg reads is resolved: another transform's arguments ("$torch.float32")
    # are never evaluated.
    key = "preprocessing#transforms" if isinstance(config.raw.get("preprocessing"), dict) \
        else "preprocessing"
    settings = {"orientation": "RAS", "spacing": None, "intensity": None}
    for number in range(len(config.raw_at(key))):
        name = str(config.get(f"{key}#{number}#_target_")).rsplit(".", 1)[-1]
        where = f"preprocessing transform {number} ({name})"
        if name in NO_EFFECT:
            continue
        transform = config.get(f"{key}#{number}")
        if name not in READ_AS_SETTINGS:
            raise MedsegError(f"{config.path}: {where} is not one medseg reproduces (it "
                              f"reads {', '.join(READ_AS_SETTINGS)}, and {', '.join(NO_EFFECT)}"
                              ")")
        if name == "Orientationd":
            settings["orientation"] = str(transform.get("axcodes", "RAS"))
        elif name == "Spacingd":
            pixdim = transform.get("pixdim")
            settings["spacing"] = tuple(float(s) for s in (pixdim if isinstance(pixdim, list)
                                                           else [pixdim] * 3))
        else:
            settings["intensity"] = _intensity(transform, config.path, where)
    if settings["orientation"] not in ORIENTATIONS or settings["spacing"] is None \
            or settings["intensity"] is None:
        raise MedsegError(f"{config.path}: the preprocessing must reorient to "
                          f"{' or '.join(ORIENTATIONS)}, resample (Spacingd) and scale CT "
                          "intensities (ScaleIntensityRanged) for medseg to run it")
    roi = config.get("inferer").get("roi_size")
    if not isinstance(roi, list) or len(roi) != 3:
        raise MedsegError(f"{config.path}: inferer#roi_size {roi!r} is not three numbers")
    # MONAI's sliding window pads with 0 in the scaled intensities: medseg's "zero" padding.
    return NetworkInput(spacing=settings["spacing"], intensity=settings["intensity"],
                        patch_size=tuple(int(r) for r in roi), padding=LEGACY_PADDING,
                        orientation=settings["orientation"])


def _intensity(transform: dict, path: Path, where: str) -> dict:
    """ScaleIntensityRanged (a_min..a_max -> b_min..b_max, clipped) as medseg's window: clip,
    then (x - mean) / std, the same linear map."""
    try:
        a_min, a_max = float(transform["a_min"]), float(transform["a_max"])
        b_min, b_max = float(transform.get("b_min", 0.0)), float(transform.get("b_max", 1.0))
    except (KeyError, TypeError, ValueError):
        raise MedsegError(f"{path}: {where} needs numbers a_min, a_max (b_min, b_max)") from None
    if not transform.get("clip", False) or a_max <= a_min or b_max == b_min:
        raise MedsegError(f"{path}: {where} must clip a range a_min < a_max onto b_min != b_max "
                          "for medseg to reproduce it")
    std = (a_max - a_min) / (b_max - b_min)
    return {"clip": [a_min, a_max], "mean": a_min - b_min * std, "std": std}


def _load_weights(network: torch.nn.Module, folder: Path) -> None:
    path = folder / WEIGHTS
    if not path.is_file():
        raise MedsegError(f"{path}: missing; the bundle's weights are needed")
    payload = safe_torch_load(path, advice="give the bundle's models/model.pt (a state dict)",
                              whose="MONAI bundle")
    state = payload.get("model", payload) if isinstance(payload, dict) else payload
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise MedsegError(f"{path}: the weights do not fit network_def's network "
                          f"({first_line(exc)[:160]})") from None


def open_bundle(folder: Path, options: EngineOptions, device: torch.device) -> MedsegPredictor:
    """The bundle behind the Predictor contract: medseg's predictor over its network."""
    network, spec, labels = read_bundle(folder)
    predictor = MedsegPredictor.for_network(network.to(device).eval(), spec, labels, options,
                                            device)
    folder = Path(folder)
    predictor.model_id = "bundle " + files_digest([folder / CONFIG, folder / METADATA,
                                                   folder / WEIGHTS])
    return predictor
