"""``--model_args`` of the lmms-eval plugin: typed values, sorted by destination (no lmms-eval needed)."""

from __future__ import annotations

import pytest

from prunekit.integrations.lmms_eval import parse_value, split_model_args


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("128", 128),
        ("0.25", 0.25),
        ("1e-3", 1e-3),
        ("-2", -2),
        ("true", True),
        ("False", False),
        ("none", None),
        ("max", "max"),
        ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-7b-hf"),
        (7, 7),  # lmms-eval's own parser already typed it
        (False, False),
    ],
)
def test_parse_value_types_model_args(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_split_model_args_sends_each_key_to_its_destination():
    args = split_model_args(
        {
            "pretrained": "/ckpt",
            "pruner": "resprune",
            "budget": "128",
            "alpha": "2.5",
            "aggregation": "mean",
            "dtype": "bfloat16",
            "device_map": "auto",
            "trust_remote_code": "true",
            "llm_layer": "2",
            "positions": "original",
        }
    )
    assert (args.pretrained, args.pruner, args.budget) == ("/ckpt", "resprune", 128)
    assert args.load == {"dtype": "bfloat16", "device_map": "auto", "trust_remote_code": True}
    assert args.adapter == {"llm_layer": 2, "positions": "original"}
    assert args.pruner_params == {"alpha": 2.5, "aggregation": "mean"}


def test_split_model_args_fraction_budget_and_unpruned_reference():
    assert split_model_args({"pretrained": "p", "pruner": "random", "budget": "0.5"}).budget == 0.5
    args = split_model_args({"pretrained": "p", "pruner": "none"})
    assert (args.pruner, args.budget, args.pruner_params) == ("none", None, {})


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ({"pruner": "resprune", "budget": 8}, ValueError, "pretrained"),
        ({"pretrained": "p", "budget": 8}, ValueError, "pruner"),
        ({"pretrained": "p", "pruner": "resprune"}, ValueError, "budget"),
        ({"pretrained": "p", "pruner": "resprune", "budget": "1.5"}, ValueError, "fraction"),
        ({"pretrained": "p", "pruner": "resprune", "budget": "0"}, ValueError, "at least 1"),
        ({"pretrained": "p", "pruner": "none", "alpha": 2.0}, ValueError, "alpha"),
    ],
)
def test_split_model_args_rejects_missing_and_wrong_keys(args, error, match):
    with pytest.raises(error, match=match):
        split_model_args(args)
