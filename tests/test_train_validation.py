"""Validation: the held-out split, the options, the fixed draws, the metadata fields and the second loss curve.

Pure tests; the runs on the tiny model are in test_train_validation_run.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_lora.networks.metadata import LoraMetadata
from lib_lora.tiny.images import DETAIL_PATTERN, generate_detail_dataset
from lib_lora.train import noise
from lib_lora.train.config import TrainConfig
from lib_lora.train.data_scan import ImageItem
from lib_lora.train.errors import ConfigError
from lib_lora.train.runtime import preserved_global_rng
from lib_lora.train.validation import evaluating, fixed_draws
from lib_lora.train.validation_split import held_out_count, held_out_keys, split_items
from lib_lora.ui.train.view import loss_curve_image


def _items(counts: dict[str, int]) -> list[ImageItem]:
    return [ImageItem(Path(f"/d/{subset}/{index}.png"), f"{subset}/{index}.png", "tag", subset, 10, False, (64, 64))
            for subset, count in counts.items() for index in range(count)]


# --- the split -------------------------------------------------------------------------------------------------


def test_the_split_is_taken_per_subfolder_and_keeps_a_training_image_in_each() -> None:
    items = _items({"10_big": 20, "5_small": 2, "3_single": 1})
    train, held = split_items(items, 0.25, seed=7)
    held_by = {subset: sum(item.subset == subset for item in held) for subset in ("10_big", "5_small", "3_single")}
    assert held_by == {"10_big": 5, "5_small": 1, "3_single": 0}
    assert {item.key for item in train} | {item.key for item in held} == {item.key for item in items}
    assert all(item.repeats == 1 for item in held) and all(item.repeats == 10 for item in train)
    assert [held_out_count(n, 0.9) for n in (1, 2, 3, 10)] == [0, 1, 2, 9]
    assert held_out_count(100, 0.001) == 1  # a split asked for holds at least one image of each folder


def test_the_split_depends_on_the_seed_and_the_keys_not_on_the_scan_order() -> None:
    items = _items({"1_a": 30, "1_b": 30})
    first = held_out_keys(items, 0.2, seed=3)
    assert held_out_keys(list(reversed(items)), 0.2, seed=3) == first
    assert held_out_keys(items, 0.2, seed=4) != first
    # adding a folder does not move the images held out of the others
    more = held_out_keys(items + _items({"1_c": 10}), 0.2, seed=3)
    assert {key for key in more if not key.startswith("1_c/")} == first


def test_a_split_that_can_hold_nothing_out_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="validation_split.*single image.*validation_dir"):
        held_out_keys(_items({"1_a": 1, "2_b": 1}), 0.5, seed=0)


# --- the options -----------------------------------------------------------------------------------------------


def test_the_validation_options_are_read_checked_and_written_back(tmp_path: Path) -> None:
    config = TrainConfig.from_dict({"validation_split": "0.1", "validation_seed": 5, "validate_every_n_steps": 50,
                                    "validation_timesteps": 8})
    assert (config.validation_split, config.validation_seed, config.validate_every_n_steps) == (0.1, 5, 50)
    assert TrainConfig.from_toml_text(config.to_toml()) == config
    assert "validation_split = 0.1" in config.to_toml().split("[dataset_arguments]")[1].split("[")[0]
    with pytest.raises(ConfigError, match="validation_split.*not both"):
        TrainConfig.from_dict({"validation_split": 0.1, "validation_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="validate_every_n_epochs.*needs validation images"):
        TrainConfig.from_dict({"validate_every_n_epochs": 1})
    with pytest.raises(ConfigError, match="validation_split.*probability"):
        TrainConfig.from_dict({"validation_split": 1.0})
    with pytest.raises(ConfigError, match="validation_dir.*is the training folder"):
        TrainConfig.from_dict({"train_data_dir": str(tmp_path), "validation_dir": str(tmp_path / ".")})


def test_the_train_form_has_a_field_for_every_validation_option() -> None:
    from lib_lora.ui.train import form as train_form

    names = ("validation_split", "validation_seed", "validation_dir", "validate_every_n_steps",
             "validate_every_n_epochs", "validation_timesteps")
    assert all(name in train_form.FIELD_BY_NAME for name in names)
    values = {**train_form.default_values(), "validation_split": "0.2", "validate_every_n_epochs": "2"}
    config = train_form.config_from(values)
    assert (config.validation_split, config.validate_every_n_epochs) == (0.2, 2)
    assert train_form.values_of(config)["validation_split"] == "0.2"


# --- the fixed draws -------------------------------------------------------------------------------------------


def test_the_draws_of_an_image_depend_only_on_its_key_and_the_seed() -> None:
    t1, e1 = fixed_draws("1_a/x.png", 3, 4, (4, 8, 8))
    torch.manual_seed(123)  # the global generators play no part
    t2, e2 = fixed_draws("1_a/x.png", 3, 4, (4, 8, 8))
    assert torch.equal(t1, t2) and torch.equal(e1, e2)
    t3, e3 = fixed_draws("1_a/y.png", 3, 4, (4, 8, 8))
    assert not torch.equal(e1, e3)
    assert not torch.equal(fixed_draws("1_a/x.png", 4, 4, (4, 8, 8))[1], e1)
    # one timestep in each quarter of the schedule
    slice_ = noise.NUM_TIMESTEPS // 4
    assert [int(t) // slice_ for t in t1] == [0, 1, 2, 3]


def test_measuring_leaves_the_random_states_and_the_module_modes_as_they_were() -> None:
    import random

    import numpy as np

    module = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    module.train()
    module[1].eval()
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with preserved_global_rng(), evaluating([module]):
        assert not any(sub.training for sub in module.modules())
        torch.rand(3), random.random(), np.random.rand()
    assert module.training and module[0].training and not module[1].training
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert (np.random.get_state()[1] == before[2]).all()


# --- where the value goes --------------------------------------------------------------------------------------


def test_the_metadata_records_the_validation_loss_and_its_step() -> None:
    metadata = LoraMetadata(arch="sd1", network_dim=4, network_alpha=4.0, validation_loss=0.123456789,
                            validation_step=40, validation_seed=3, validation_timesteps=4).to_metadata()
    assert metadata["ss_validation_loss"] == "0.123456789" and metadata["ss_validation_step"] == "40"
    assert (metadata["ss_validation_seed"], metadata["ss_validation_timesteps"]) == ("3", "4")
    assert "ss_validation_loss" not in LoraMetadata(arch="sd1", network_dim=4, network_alpha=4.0).to_metadata()
    with pytest.raises(ValueError, match="validation_loss"):
        LoraMetadata(arch="sd1", network_dim=4, network_alpha=4.0, validation_loss=float("nan"))


def test_the_loss_curve_draws_the_validation_loss_as_a_second_line() -> None:
    train = [(step, 1.0 - step / 200) for step in range(1, 101)]
    plain = loss_curve_image(train)
    both = loss_curve_image(train, validation=[(20, 1.1), (60, 0.95), (100, 0.97)])
    assert plain is not None and both is not None
    orange = (234, 88, 12)
    assert orange not in set(plain.getdata()) and orange in set(both.getdata())


# --- the images the memorising run uses --------------------------------------------------------------------------


def test_images_of_one_kind_share_the_checkerboard_and_differ_in_squares_of_their_own(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    first = generate_detail_dataset(tmp_path / "a", count=3, seed=0)
    again = generate_detail_dataset(tmp_path / "b", count=3, seed=0)
    other = generate_detail_dataset(tmp_path / "c", count=1, seed=1)
    pixels = [np.asarray(Image.open(path)) for path in (*first.images, *other.images)]
    assert all(np.array_equal(a, np.asarray(Image.open(b))) for a, b in zip(pixels, again.images))
    assert first.folder.name == "1_zqdetail" and first.captions == ("zqdetail",) * 3
    board = np.array(DETAIL_PATTERN, dtype=np.uint8)[(np.arange(64)[:, None] // 16 + np.arange(64) // 16) % 2]
    own = [(image != board).any(axis=2) for image in pixels]
    assert all(0.15 < mask.mean() < 0.45 for mask in own)  # about 30% of each image is its own
    assert not any(np.array_equal(a, b) for i, a in enumerate(pixels) for b in pixels[i + 1:])
