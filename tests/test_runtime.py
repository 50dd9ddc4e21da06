"""CPU speed settings: glibc keeps freed tensor memory (keep_freed_memory), channels-last models (CHANNELS_LAST)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from config import get_config
from models import build_model
from utils.runtime import place_model

# A child process: page faults of ten "steps" that each fill four 40 MB tensors (above glibc's largest mmap
# threshold, as a batch's activations are) and free them, with or without keep_freed_memory.
FAULTS = """
import json, resource, sys, torch
from utils.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(10 * 2**20).fill_(1.0) for _ in range(4)]
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""
STEP_PAGES = 4 * 40 * 2**20 // 4096  # pages a step touches: 40,960


def faults_of(mode: str, **env: str) -> dict:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], env={**environ, **env}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


@pytest.mark.slow
def test_keep_freed_memory_reuses_the_pages_of_freed_tensors():
    """By default every step's tensors are page-faulted in afresh; kept, the heap settles and steps reuse its pages."""
    default, kept = faults_of("default"), faults_of("keep")
    assert kept["applied"] is True
    assert min(default["faults"][1:]) > 0.9 * STEP_PAGES
    assert sum(kept["faults"][-4:]) < 0.5 * STEP_PAGES, kept["faults"]


@pytest.mark.slow
def test_keep_freed_memory_leaves_a_users_malloc_settings_alone():
    result = faults_of("keep", MALLOC_MMAP_MAX_="65536")
    assert result["applied"] is False
    assert min(result["faults"][1:]) > 0.9 * STEP_PAGES


def lite0(channels_last: bool):
    return get_config(Namespace(cfg=None, opts=["MODEL.TYPE", "tf_efficientnet_lite0", "DATA.IMG_SIZE", "64",
                                                "CHANNELS_LAST", str(channels_last)]))


def test_channels_last_model_and_its_weights_load_into_a_plain_model():
    """Same arithmetic, other layout: a channels-last model's state dict (weights_only) gives a NCHW model
    its outputs."""
    torch.manual_seed(0)
    model = place_model(build_model(lite0(True)), lite0(True), torch.device("cpu")).eval()
    stem = model.backbone.conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    plain = place_model(build_model(lite0(False)), lite0(False), torch.device("cpu")).eval()
    plain.load_state_dict(torch.load(buffer, weights_only=True))
    assert plain.backbone.conv_stem.weight.is_contiguous()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images), rtol=1e-4, atol=1e-5)
