"""``hf:DATASET[:CONFIG][:SPLIT][:COLUMN]`` prompt sets through the ``datasets`` library, on datasets written here:
``save_to_disk`` folders and data folders (Parquet, CSV) that ``load_dataset`` reads; nothing touches the network."""

import json

import pytest

from dpo_diff.cli import main
from dpo_diff.prompt_sets import PromptSetError, read_prompt_set

datasets = pytest.importorskip("datasets")

PARTI = {"Prompt": ["a red dog on the grass", "a big happy cat", "A RED DOG ON THE GRASS"],
         "Category": ["Animals", "Animals", "Animals"], "Index": [0, 1, 2]}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Data folders are converted into the datasets cache: keep it inside the test."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture
def saved_dict(tmp_path):
    folder = tmp_path / "parti_saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(PARTI),
                          "test": datasets.Dataset.from_dict({**PARTI, "Prompt": ["a cow", "a hen", "a pig"]})}
                         ).save_to_disk(str(folder))
    return folder


def test_a_save_to_disk_dict_reads_a_split_and_finds_the_prompt_column_in_any_case(saved_dict):
    ps = read_prompt_set(f"hf:{saved_dict}::train")
    assert ps.prompts == ["a red dog on the grass", "a big happy cat"] and ps.dropped == {"duplicate": 1}
    assert ps.format == "hf" and ps.source == f"hf:{saved_dict}::train"
    assert read_prompt_set(f"hf:{saved_dict}::test:Prompt").prompts == ["a cow", "a hen", "a pig"]
    assert read_prompt_set(f"hf:{saved_dict}::test", column="Category").prompts == ["Animals"]


def test_a_save_to_disk_folder_refuses_what_it_does_not_have(saved_dict, tmp_path):
    with pytest.raises(PromptSetError, match=r"has splits \['train', 'test'\]; name one as the third field"):
        read_prompt_set(f"hf:{saved_dict}")
    with pytest.raises(PromptSetError, match=r"no split 'validation'; splits: \['train', 'test'\]"):
        read_prompt_set(f"hf:{saved_dict}::validation")
    with pytest.raises(PromptSetError, match=r"no column 'prompt'; columns: \['Prompt', 'Category', 'Index'\] "
                                             r"\(text: \['Prompt', 'Category'\]\)"):
        read_prompt_set(f"hf:{saved_dict}::train:prompt")
    with pytest.raises(PromptSetError, match=r"column 'Index' holds .*int64.*not text; text columns: \['Prompt', "):
        read_prompt_set(f"hf:{saved_dict}::train:Index")
    with pytest.raises(PromptSetError, match="save_to_disk folder, which has no configs"):
        read_prompt_set(f"hf:{saved_dict}:default:train")
    with pytest.raises(PromptSetError, match="names column 'Prompt' but --column says 'Category'"):
        read_prompt_set(f"hf:{saved_dict}::train:Prompt", column="Category")
    with pytest.raises(PromptSetError, match=r"expected hf:DATASET\[:CONFIG\]\[:SPLIT\]\[:COLUMN\]"):
        read_prompt_set(f"hf:{saved_dict}:a:b:c:d")
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"text": ["a blue bird", "a green frog"], "n": [1, 2]}).save_to_disk(str(single))
    assert read_prompt_set(f"hf:{single}").prompts == ["a blue bird", "a green frog"]
    with pytest.raises(PromptSetError, match="holds a single dataset .* not a split 'test'; leave SPLIT empty"):
        read_prompt_set(f"hf:{single}::test")
    nameless = tmp_path / "nameless"
    datasets.Dataset.from_dict({"n": [1, 2], "score": [0.1, 0.2]}).save_to_disk(str(nameless))
    with pytest.raises(PromptSetError, match=r"no prompt/caption/text column \(text columns: \[\]\); name it"):
        read_prompt_set(f"hf:{nameless}")


def test_a_parquet_data_folder_flattens_caption_lists_and_takes_split_slices(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    # COCO Karpathy style: one row per image, five captions in one list cell; load_dataset names splits by file
    folder = tmp_path / "coco"
    folder.mkdir()
    pq.write_table(pa.table({"cocoid": [1, 2], "sentences": [["A man riding a horse.", "a man riding a horse."],
                                                              ["Two dogs playing."]]}), folder / "test.parquet")
    pq.write_table(pa.table({"cocoid": [3], "sentences": [["A bowl of fruit."]]}), folder / "train.parquet")
    ps = read_prompt_set(f"hf:{folder}::test:sentences")
    assert ps.prompts == ["A man riding a horse.", "Two dogs playing."] and ps.total == 3
    assert read_prompt_set(f"hf:{folder}::test[1:]:sentences").prompts == ["Two dogs playing."]
    with pytest.raises(PromptSetError, match=r"no split 'val'; splits: \['test', 'train'\]|no split 'val'; "
                                             r"splits: \['train', 'test'\]"):
        read_prompt_set(f"hf:{folder}::val:sentences")
    with pytest.raises(PromptSetError, match="no prompt/caption/text column .*'sentences'"):
        read_prompt_set(f"hf:{folder}::train")


def test_a_csv_data_folder_and_a_bad_config_name_list_what_exists(tmp_path):
    folder = tmp_path / "drawbench"
    folder.mkdir()
    (folder / "train.csv").write_text("Prompts,Category\nA red colored car.,Colors\nA black colored car.,Colors\n")
    assert read_prompt_set(f"hf:{folder}:::Prompts").prompts == ["A red colored car.", "A black colored car."]
    with pytest.raises(PromptSetError, match=r"'foo' not found.*\(configs: \['default'\]\); the config is the "
                                             r"second field"):
        read_prompt_set(f"hf:{folder}:foo::Prompts")


def test_a_hub_dataset_not_cached_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(PromptSetError) as e:
        read_prompt_set("hf:nobody-here/not-a-cached-dataset::train:Prompt")
    msg = str(e.value)
    assert "'nobody-here/not-a-cached-dataset' is not in the datasets cache" in msg
    assert "HF_DATASETS_OFFLINE" in msg and "hf:FOLDER for a folder written by save_to_disk" in msg


def test_a_dataset_script_is_refused_with_the_reason(tmp_path):
    folder = tmp_path / "scripted"
    folder.mkdir()
    (folder / "scripted.py").write_text("import datasets\n")
    with pytest.raises(PromptSetError, match="no longer runs dataset scripts: point at the data files"):
        read_prompt_set(f"hf:{folder}")


def test_select_and_bench_take_hf_prompt_sets(tiny_sd, tiny_clip, saved_dict, tmp_path, capsys):
    out = tmp_path / "hard.json"
    assert main(["select", "--prompts", f"hf:{saved_dict}::train", "--model", tiny_sd, "--judge", tiny_clip,
                 "--steps", "3", "--seeds", "0", "--device", "cpu", "--threshold", "0", "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())) == ["a red dog on the grass", "a big happy cat"]
    assert f"hf:{saved_dict}::train: 3 entries -> 2 prompts (dropped: 1 duplicate)" in capsys.readouterr().out
    assert main(["bench", "--world", "--prompts", f"hf:{saved_dict}::nope", "--out", str(tmp_path / "b")]) == 2
    assert "no split 'nope'; splits: ['train', 'test']" in capsys.readouterr().err
