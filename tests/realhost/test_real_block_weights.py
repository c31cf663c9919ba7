"""Block weights on the real hosts, image against image: a preset applies exactly what a LoRA restricted to its
blocks applies (pixel for pixel), in txt2img, hires fix and img2img, with two LoRAs, by name, by `lbw=` and as a
literal vector; a step window gates the UNet part; nothing leaks into the next generation.

The host's LoRAs (loras.LoraSet): `lsplain` reaches every attention/MLP module of the UNet's 17 (SD1) or 12 (SDXL)
block-weight blocks and of the text encoders; the group LoRA (`lsouttd` on SD1, `lsoutall` on SDXL) is the same
tensors restricted to the group's blocks; `lssecond` is another random LoRA. Images are cached per payload for
the session (hosts.RealHost), so each is generated once.
"""

from __future__ import annotations

import pytest
from checks import VISIBLE_LEVELS, assert_differs, assert_same, assert_sound, hires, prompt_with
from loras import preset_vector


def tag(name: str, spec: str = "1") -> str:
    return f"<lora:{name}:{spec}>"


@pytest.mark.smoke
def test_the_test_loras_visibly_change_the_image(host, loras) -> None:  # noqa: ANN001
    none = host.txt2img()
    plain = host.txt2img(prompt=prompt_with(tag(loras.plain)))
    for result, what in ((none, "no LoRA"), (plain, "lsplain")):
        assert_sound(result, what)
    assert_differs(plain, none, "lsplain vs no LoRA", levels=VISIBLE_LEVELS)


@pytest.mark.smoke
def test_none_preset_equals_no_lora(host, loras) -> None:  # noqa: ANN001
    assert_same(host.txt2img(prompt=prompt_with(tag(loras.plain, "1:NONE"))), host.txt2img(), "NONE vs no LoRA")


@pytest.mark.smoke
def test_all_preset_equals_the_plain_lora(host, loras) -> None:  # noqa: ANN001
    assert_same(host.txt2img(prompt=prompt_with(tag(loras.plain, "1:ALL"))),
                host.txt2img(prompt=prompt_with(tag(loras.plain))), "ALL vs plain")


def test_a_group_preset_equals_the_lora_restricted_to_its_blocks(host, loras) -> None:  # noqa: ANN001
    group = host.txt2img(prompt=prompt_with(tag(loras.plain, f"1:{loras.group}")))
    restricted = host.txt2img(prompt=prompt_with(tag(loras.group_lora)))
    assert_differs(restricted, host.txt2img(), f"{loras.group_lora} vs no LoRA")
    assert_differs(restricted, host.txt2img(prompt=prompt_with(tag(loras.plain))), f"{loras.group_lora} vs plain")
    assert_same(group, restricted, f"{loras.group} vs {loras.group_lora}")


def test_ncnf_by_name_by_lbw_and_as_its_literal_vector(host, loras) -> None:  # noqa: ANN001
    ncnf = host.txt2img(prompt=prompt_with(tag(loras.plain, "1:NCNF")))
    assert_differs(ncnf, host.txt2img(), "NCNF vs no LoRA")
    assert_differs(ncnf, host.txt2img(prompt=prompt_with(tag(loras.plain))), "NCNF vs plain")
    vector = preset_vector("NCNF", host.arch)
    assert len(vector.split(",")) == {"sd1": 17, "sdxl": 12}[host.arch]
    assert_same(host.txt2img(prompt=prompt_with(tag(loras.plain, f"1:{vector}"))), ncnf, f"vector {vector} vs NCNF")
    assert_same(host.txt2img(prompt=prompt_with(tag(loras.plain, "1:lbw=NCNF"))), ncnf, "lbw=NCNF vs NCNF")


def test_a_step_window_gates_the_unet_part(host, loras) -> None:  # noqa: ANN001
    """4 steps (blocks.steps): `stop=2` applies the UNet part in the first step only, `start=2` from the second step
    on, `start=0` in all four; the text-encoder part is never gated. Euler's last steps change little (its last step
    returns the denoiser's output at a low noise level), so each window is checked where it matters most, the first
    step: on against the LoRA without its UNet part (`<lora:lsplain:1:0>`), off against the plain LoRA."""
    none = host.txt2img()
    plain = host.txt2img(prompt=prompt_with(tag(loras.plain)))
    text_only = host.txt2img(prompt=prompt_with(tag(loras.plain, "1:0")))
    assert_differs(text_only, plain, "the UNet part changes nothing")
    first_step = host.txt2img(prompt=prompt_with(tag(loras.plain, "1:lbw=ALL:stop=2")))
    assert_differs(first_step, text_only, "stop=2 vs no UNet part (the UNet part is on in step 1)")
    assert_differs(first_step, none, "stop=2 vs no LoRA")
    assert_differs(first_step, plain, "stop=2 vs plain (the UNet part is off in steps 2-4)", levels=0.1)
    later_steps = host.txt2img(prompt=prompt_with(tag(loras.plain, "1:lbw=ALL:start=2")))
    assert_differs(later_steps, plain, "start=2 vs plain (the UNet part is off in step 1)")
    assert_same(host.txt2img(prompt=prompt_with(tag(loras.plain, "1:lbw=ALL:start=0"))), plain, "start=0 vs plain")


def test_hires_fix_applies_the_same_block_weights(host, loras) -> None:  # noqa: ANN001
    extra = hires(host)
    none = host.txt2img(**extra)
    assert none.image.shape == (128, 128, 3)
    assert_same(host.txt2img(prompt=prompt_with(tag(loras.plain, "1:NONE")), **extra), none, "hires NONE vs no LoRA")
    restricted = host.txt2img(prompt=prompt_with(tag(loras.group_lora)), **extra)
    assert_differs(restricted, none, f"hires {loras.group_lora} vs no LoRA")
    assert_same(host.txt2img(prompt=prompt_with(tag(loras.plain, f"1:{loras.group}")), **extra), restricted,
                f"hires {loras.group} vs {loras.group_lora}")


def test_two_loras_each_with_its_own_weights(host, loras) -> None:  # noqa: ANN001
    second = tag(loras.second, "0.5")
    both = host.txt2img(prompt=prompt_with(tag(loras.plain, f"1:{loras.group}") + second))
    expected = host.txt2img(prompt=prompt_with(tag(loras.group_lora) + second))
    assert_differs(expected, host.txt2img(prompt=prompt_with(tag(loras.group_lora))), f"{loras.second} adds nothing")
    assert_same(both, expected, f"{loras.group} + {loras.second} vs {loras.group_lora} + {loras.second}")


def test_img2img_applies_block_weights(host, loras) -> None:  # noqa: ANN001
    init = {"init_images": [host.txt2img().png_base64()], "denoising_strength": 0.6}
    none = host.img2img(**init)
    assert_differs(host.img2img(prompt=prompt_with(tag(loras.plain)), **init), none, "img2img plain vs no LoRA")
    assert_same(host.img2img(prompt=prompt_with(tag(loras.plain, "1:NONE")), **init), none, "img2img NONE vs no LoRA")


@pytest.mark.smoke
def test_nothing_leaks_into_later_generations(host, loras) -> None:  # noqa: ANN001
    """Runs after every other generation on the host (conftest.FILE_ORDER): the first images come back."""
    for prompt, what in ((prompt_with(tag(loras.plain)), "plain"), (prompt_with(""), "no LoRA")):
        first = host.txt2img(prompt=prompt)
        assert_same(host.txt2img(prompt=prompt, fresh=True), first, f"{what} again, after the other tests")
