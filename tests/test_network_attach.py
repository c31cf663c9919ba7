"""Merging LoRAs into host weights and attaching them with hooks: exact restore, no-op re-apply, partial re-merge.

Runs on the LDM-layout tiny UNets with tiny CLIP (as in A1111, no diffusers), so it runs in both environments.
"""

from __future__ import annotations

import pytest
import torch

from lib_lora.errors import LoraFormatError, LoraShapeError
from lib_lora.networks.attach import AppliedLora, WeightMerger, hooked
from lib_lora.networks.keys import TargetIndex, build_target_index_for
from lib_lora.networks.loaded import as_applied, network_from_state_dict
from lib_lora.networks.random_files import KINDS, random_lora_state_dict
from lib_lora.tiny.clip import build_tiny_text_encoder
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet

pytestmark = pytest.mark.hostcompat


class Model:
    """A tiny LDM UNet with its text encoder(s) and a TargetIndex over them."""

    def __init__(self, arch: str) -> None:
        torch.manual_seed(0)
        self.arch = arch
        self.unet = build_tiny_ldm_unet(arch, seed=0)
        self.encoders = [build_tiny_text_encoder(1)]
        if arch == "sdxl":
            self.encoders.append(build_tiny_text_encoder(2, with_projection=True))
        self.index = build_target_index_for(self.unet, "ldm", self.encoders, arch)
        self.x = torch.randn(1, 4, 8, 8)
        self.t = torch.tensor([400])
        self.tokens = torch.tensor([[5, 6, 7, 8]])

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, *self.encoders]

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(self.modules()) for k, v in
                m.state_dict().items()}

    def storages(self) -> dict[str, int]:
        return {f"{i}.{k}": p.data_ptr() for i, m in enumerate(self.modules()) for k, p in m.named_parameters()}

    def versions(self) -> dict[str, int]:
        return {f"{i}.{k}": p._version for i, m in enumerate(self.modules()) for k, p in m.named_parameters()}

    @torch.no_grad()
    def output(self) -> torch.Tensor:
        context_width = 64 if self.arch == "sdxl" else 32
        context = torch.linspace(-1, 1, 77 * context_width).reshape(1, 77, context_width)
        kwargs = {"y": torch.linspace(-1, 1, 80).reshape(1, 80)} if self.arch == "sdxl" else {}
        unet_out = self.unet(self.x, self.t, context=context, **kwargs)
        text_out = torch.cat([e(self.tokens).last_hidden_state.flatten() for e in self.encoders])
        return torch.cat([unet_out.flatten(), text_out])


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def model(request) -> Model:
    return Model(request.param)


def lora(model: Model, kind: str = "lora", seed: int = 0, **multipliers) -> AppliedLora:
    network = network_from_state_dict(random_lora_state_dict(model.index, kind=kind, seed=seed), name=f"{kind}{seed}")
    return as_applied(network, **multipliers)


def assert_equal_states(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"not bit-identical: {changed[:5]}"


@pytest.mark.parametrize("swap_storage", [False, True], ids=["in-place", "swap"])
@pytest.mark.parametrize("kind", KINDS)
def test_merge_changes_output_and_restore_is_bit_identical(model, kind, swap_storage):
    before, output, storages = model.state(), model.output(), model.storages()
    merger = WeightMerger(model.index, swap_storage=swap_storage)
    loras = [lora(model, kind, seed) for seed in range(3)]
    report = merger.apply(loras)
    assert report.rebuilt > 0 and not report.unmatched
    assert not torch.allclose(model.output(), output, atol=1e-4)
    assert (model.storages() == storages) != swap_storage, "in place keeps storage, swap gives new storage"
    merger.restore()
    assert_equal_states(before, model.state())
    assert torch.equal(model.output(), output)
    assert model.storages() == storages, "restore hands back the original tensors"


def test_three_formats_at_once_restore_exactly(model):
    before = model.state()
    merger = WeightMerger(model.index)
    with merger.applied([lora(model, "loha"), lora(model, "lokr", 1), lora(model, "dora", 2)]) as report:
        assert merger.merged_slots == report.rebuilt > 0
    assert merger.merged_slots == 0
    assert_equal_states(before, model.state())


def test_merged_weight_is_base_plus_scaled_deltas(model):
    first, second = lora(model, seed=0, unet_multiplier=0.7, te_multiplier=0.3), lora(model, seed=1)
    target = model.index.lookup(next(k for k in first.modules if k.startswith("lora_unet_")))
    te_target = model.index.lookup(next(k for k in first.modules if k.startswith("lora_te")))
    base, te_base = target.weight.detach().clone().float(), te_target.weight.detach().clone().float()
    merger = WeightMerger(model.index)
    merger.apply([first, second])
    expected = base + first.modules[target.key].delta_weight(base, 0.7) + second.modules[target.key].delta_weight(
        base, 1.0)
    assert torch.allclose(target.weight.float(), expected, atol=1e-6)
    te_expected = te_base + first.modules[te_target.key].delta_weight(te_base, 0.3) + second.modules[
        te_target.key].delta_weight(te_base, 1.0)
    assert torch.allclose(te_target.weight.float(), te_expected, atol=1e-6)
    merger.restore()


def test_same_set_again_writes_nothing(model):
    loras = [lora(model, "lora", 0), lora(model, "locon", 1)]
    merger = WeightMerger(model.index)
    first = merger.apply(loras)
    versions, state = model.versions(), model.state()
    again = merger.apply([lora(model, "lora", 0), lora(model, "locon", 1)])  # equal content, new objects
    assert (again.rebuilt, again.unchanged) == (0, first.rebuilt)
    assert model.versions() == versions
    assert_equal_states(state, model.state())
    merger.restore()


def test_changed_set_rebuilds_only_what_changed(model):
    merger = WeightMerger(model.index)
    unet_only = lora(model, "lora", 0)
    locon = lora(model, "locon", 1)
    merger.apply([unet_only, locon])
    conv_only = {k for k in locon.modules if k not in unet_only.modules}
    report = merger.apply([unet_only])  # drop the LoCon: its conv-only targets go back to base
    assert report.restored == len(conv_only) and report.unchanged == 0  # shared targets lose a contribution
    block = "IN04" if model.arch == "sd1" else "IN07"
    reweighted = as_applied(network_from_state_dict(random_lora_state_dict(model.index, seed=0), name="again"),
                            block_weights={block: 0.5})
    report = merger.apply([reweighted])
    in_block = [k for k in reweighted.modules if (t := model.index.lookup(k)) is not None and t.block == block]
    assert 0 < report.rebuilt == len(in_block) and report.unchanged == len(reweighted.modules) - len(in_block)
    merger.restore()


def test_block_weight_zero_leaves_that_block_at_base(model):
    block = "OUT03" if model.arch == "sd1" else "OUT01"
    merger = WeightMerger(model.index)
    applied = lora(model, block_weights={block: 0.0})
    targets = [model.index.lookup(k) for k in applied.modules]
    in_block = [t for t in targets if t.block == block]
    assert in_block, f"the tiny {model.arch} UNet has LoRA targets in {block}"
    outside = next(t for t in targets if t.root == "unet" and t.block != block)
    before = {t.key: t.weight.detach().clone() for t in [*in_block, outside]}
    merger.apply([applied])
    assert all(torch.equal(t.weight, before[t.key]) for t in in_block)
    assert not torch.equal(outside.weight, before[outside.key])
    merger.restore()


def test_a_refused_set_keeps_the_previous_one(model):
    merger = WeightMerger(model.index)
    merger.apply([lora(model, seed=0)])
    merged_state, slots = model.state(), merger.merged_slots
    state_dict = random_lora_state_dict(model.index, seed=1)
    key = sorted(k for k in state_dict if k.endswith("lora_up.weight"))[-1]
    up = state_dict[key]
    state_dict[key] = torch.randn(up.shape[0] + 1, *up.shape[1:])  # consistent with lora_down, not with the target
    with pytest.raises(LoraShapeError, match=key.split(".")[0]):
        merger.apply([lora(model, seed=2), as_applied(network_from_state_dict(state_dict, name="bad"))])
    assert merger.merged_slots == slots
    assert_equal_states(merged_state, model.state())
    merger.restore()


def test_a_merge_that_fails_midway_restores_the_base_weights(model):
    before = model.state()
    merger = WeightMerger(model.index)
    merger.apply([lora(model, seed=0)])
    state_dict = random_lora_state_dict(model.index, seed=1)
    key = sorted(k for k in state_dict if k.endswith("lora_up.weight"))[-1]
    state_dict[key] = torch.full_like(state_dict[key], 1e30)  # finite factors whose product overflows
    state_dict[key.replace("lora_up", "lora_down")] = torch.full_like(state_dict[key.replace("lora_up", "lora_down")],
                                                                      1e30)
    with pytest.raises(LoraFormatError, match="non-finite"):
        merger.apply([lora(model, seed=0), as_applied(network_from_state_dict(state_dict, name="overflow"))])
    assert merger.merged_slots == 0
    assert_equal_states(before, model.state())


def test_non_finite_files_never_reach_the_model(model):
    state_dict = random_lora_state_dict(model.index, seed=3)
    key = next(iter(state_dict))
    state_dict[key] = state_dict[key].clone()
    state_dict[key].view(-1)[0] = float("nan")
    with pytest.raises(LoraFormatError, match="NaN|non-finite|finite"):
        network_from_state_dict(state_dict, name="nan")


def test_unknown_keys_are_reported_not_applied(model):
    state_dict = random_lora_state_dict(model.index, seed=4)
    state_dict["lora_unet_no_such_block_proj.lora_down.weight"] = torch.zeros(2, 4)
    state_dict["lora_unet_no_such_block_proj.lora_up.weight"] = torch.zeros(4, 2)
    merger = WeightMerger(model.index)
    report = merger.apply([as_applied(network_from_state_dict(state_dict, name="odd"))])
    assert report.unmatched == {"odd": ["lora_unet_no_such_block_proj"]}
    merger.restore()


class ForgeLikeLinear(torch.nn.Module):
    """Not an nn.Linear subclass, but carries a weight and uses it (as Forge's operations do)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width, width))
        self.bias = torch.nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def test_modules_that_only_carry_a_weight_merge_and_hook():
    unet = torch.nn.Module()
    unet.input_blocks = torch.nn.ModuleList([torch.nn.Module() for _ in range(5)])
    block = torch.nn.Module()
    unet.input_blocks[4] = torch.nn.ModuleList([torch.nn.Identity(), block])
    block.proj_in = ForgeLikeLinear(8)
    index = build_target_index_for(unet, "ldm", [build_tiny_text_encoder(0)], "sd1")
    target = index.lookup("lora_unet_input_blocks_4_1_proj_in")
    assert target is not None and target.block == "IN04"
    state_dict = {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.randn(2, 8),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.randn(8, 2),
        "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(2.0),
    }
    applied = as_applied(network_from_state_dict(state_dict, name="forge"))
    x = torch.randn(3, 8)
    base_out = block.proj_in(x).detach()
    with hooked(index, [applied]):
        hooked_out = block.proj_in(x).detach()
    merger = WeightMerger(index)
    merger.apply([applied])
    merged_out = block.proj_in(x).detach()
    merger.restore()
    assert torch.allclose(merged_out, hooked_out, atol=1e-5) and not torch.allclose(merged_out, base_out)
    assert torch.equal(block.proj_in(x), base_out)


def test_hooks_match_the_merge_and_detach_leaves_no_trace(model):
    applied = [lora(model, "lora", 0), lora(model, "locon", 1, unet_multiplier=0.5)]
    names_before = [n for m in model.modules() for n, _ in m.named_modules()]
    keys_before = [list(m.state_dict()) for m in model.modules()]
    base = model.output()
    merger = WeightMerger(model.index)
    with merger.applied(applied):
        merged = model.output()
    with hooked(model.index, applied) as attached:
        assert torch.allclose(model.output(), merged, atol=1e-4)
        attached.set_multipliers({applied[0].identity: 0.0, applied[1].identity: 0.0})
        assert torch.allclose(model.output(), base, atol=1e-6)
    assert torch.equal(model.output(), base)
    assert [n for m in model.modules() for n, _ in m.named_modules()] == names_before
    assert [list(m.state_dict()) for m in model.modules()] == keys_before
    assert all(not m._forward_hooks for root in model.modules() for m in root.modules())


def test_hooks_are_removed_when_the_body_raises(model):
    with pytest.raises(RuntimeError, match="cancel"):
        with hooked(model.index, [lora(model)]):
            raise RuntimeError("cancel")
    assert all(not m._forward_hooks for root in model.modules() for m in root.modules())


def test_open_clip_fused_attention_merges_like_hf_names():
    from lib_lora.tiny.openclip import openclip_from_hf

    hf = build_tiny_text_encoder(2, with_projection=True)
    open_clip = openclip_from_hf(hf)
    hf_index = build_target_index_for(None, "ldm", [build_tiny_text_encoder(1), hf], "sdxl")
    oc_index = build_target_index_for(None, "ldm", [build_tiny_text_encoder(1), open_clip], "sdxl")
    state_dict = random_lora_state_dict(hf_index, seed=5, roots=("te2",))
    assert any("_self_attn_q_proj" in k for k in state_dict)
    applied = as_applied(network_from_state_dict(state_dict, name="te2"))
    tokens = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        base = open_clip(tokens)[0].clone()
        before = open_clip.state_dict()
        before = {k: v.clone() for k, v in before.items()}
        hf_merger, oc_merger = WeightMerger(hf_index), WeightMerger(oc_index)
        hf_merger.apply([applied])
        oc_merger.apply([applied])
        hf_out = hf(tokens).last_hidden_state
        oc_out = open_clip(tokens)[0]
        assert torch.allclose(hf_out, oc_out, atol=1e-4) and not torch.allclose(oc_out, base, atol=1e-4)
        hf_merger.restore()
        oc_merger.restore()
    assert_equal_states(before, open_clip.state_dict())
    with pytest.raises(LoraFormatError, match="fused"):
        with hooked(oc_index, [applied]):
            pass


def test_target_index_type():
    assert isinstance(Model("sd1").index, TargetIndex)


def test_a_module_that_does_not_fit_is_refused_before_any_weight_is_written(model):
    merger = WeightMerger(model.index)
    state_dict = random_lora_state_dict(model.index, seed=6)
    key = sorted(k for k in state_dict if k.endswith("lora_up.weight"))[-1]
    up = state_dict[key]
    state_dict[key] = torch.randn(up.shape[0] + 1, *up.shape[1:])
    bad = as_applied(network_from_state_dict(state_dict, name="bad"))
    versions = model.versions()
    with pytest.raises(LoraShapeError, match="does not fit"):
        merger.apply([lora(model, seed=0), bad])
    assert model.versions() == versions, "no weight may be written before the set is validated"
