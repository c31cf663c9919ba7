"""How a run computes: autocast dtype, gradient scaler and network dtype per setting, host precision and device."""

from __future__ import annotations

import pytest
import torch

from lib_lora.train.runtime import autocast_works, choose_precision

pytestmark = pytest.mark.hostcompat
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


@pytest.mark.parametrize(
    ("mixed", "full16", "fullbf", "host", "device", "autocast", "scaler", "network"),
    [
        ("no", False, False, F32, CPU, None, False, F32),
        ("bf16", False, False, F32, CPU, BF16, False, F32),
        ("no", False, False, F16, CPU, F16, False, F32),  # a half host needs autocast for fp32 LoRA weights
        ("no", False, False, BF16, CPU, BF16, False, F32),
        ("bf16", False, True, F32, CPU, BF16, False, BF16),
        ("fp16", True, False, F32, CPU, F16, False, F16),
    ],
)
def test_precision_table(mixed, full16, fullbf, host, device, autocast, scaler, network):
    if autocast is F16 and not autocast_works(device, F16):  # a torch build without it: the run falls back
        autocast, network = BF16, BF16 if network is F16 else network
    precision = choose_precision(mixed, full_fp16=full16, full_bf16=fullbf, host_dtype=host, device=device)
    assert (precision.autocast_dtype, precision.use_grad_scaler, precision.network_dtype) == (autocast, scaler, network)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_uses_the_gradient_scaler_unless_the_network_is_fp16():
    assert choose_precision("fp16", full_fp16=False, full_bf16=False, host_dtype=F16, device=CUDA).use_grad_scaler
    assert not choose_precision("fp16", full_fp16=True, full_bf16=False, host_dtype=F16,
                                device=CUDA).use_grad_scaler


def test_probing_autocast_draws_no_random_numbers():
    autocast_works.cache_clear()
    state = torch.get_rng_state()
    autocast_works(CPU, F16)
    assert torch.equal(torch.get_rng_state(), state)


def test_autocast_context_follows_the_choice():
    on = choose_precision("bf16", full_fp16=False, full_bf16=False, host_dtype=F32, device=CPU)
    off = choose_precision("no", full_fp16=False, full_bf16=False, host_dtype=F32, device=CPU)
    x, w = torch.ones(2, 4), torch.ones(3, 4)
    with on.autocast(CPU):
        assert torch.nn.functional.linear(x, w).dtype == BF16
    with off.autocast(CPU):
        assert torch.nn.functional.linear(x, w).dtype == F32
