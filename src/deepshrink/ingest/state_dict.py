"""A user's trained weights (SPEC §4 "Already trained?"): a state dict in `.safetensors`, or `.pt`/`.pth`
read with `torch.load(weights_only=True)` only, so a pickled payload is refused before anything of it
runs. Missing and unexpected keys and shape mismatches are named in one line.
"""

import pickle
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from deepshrink.errors import UserError

SUFFIXES = (".safetensors", ".pt", ".pth")


SAVE_INSTEAD = ("save the weights alone instead: torch.save(model.state_dict(), 'net.pt') or "
                "safetensors.torch.save_file(model.state_dict(), 'net.safetensors')")


def _torch_state(path: Path) -> object:
    try:
        # weights_only: torch's restricted unpickler admits tensors and containers, never a callable. Its
        # warnings (an old pickle protocol) would add lines to the one this refusal prints.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        # torch's own text is a page of advice (load it unsafely, allowlist globals); the one fact worth
        # keeping is which object the file pickles.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"it pickles {found.group(1)}" if found else f"torch.load(weights_only=True): {type(e).__name__}"
        raise UserError(f"{path}: not a plain state dict ({what}, which deepshrink never unpickles); "
                        f"{SAVE_INSTEAD}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping a weights file holds (a `{"state_dict": ...}` wrapper is unwrapped)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: weights must be a state dict in .safetensors, .pt or .pth")
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    state = _torch_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning-style and many scripts' checkpoint wrapper
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def load_weights(model: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """`model` with the file's weights (`state`: the file already read); every mismatch with the model's own
    state dict named."""
    state = read_state_dict(path) if state is None else state
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {list(state[k].shape)} vs the model's {list(own[k].shape)}" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    problems = [f"missing keys {_names(missing)}" if missing else "",
                f"unexpected keys {_names(unexpected)}" if unexpected else "",
                f"shape mismatch {_names(shapes)}" if shapes else ""]
    if any(problems):
        raise UserError(f"{path}: weights do not fit the model: {'; '.join(p for p in problems if p)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model.eval()
