import json
import subprocess
import sys

import pytest

from dpo_diff.prompt_sets import PromptSetError, clean_prompts, read_prompt_set

LONG = " ".join(["a very long prompt about many colourful things"] * 12)  # ~ 100 CLIP tokens


def test_txt_strips_collapses_dedupes_and_counts_what_it_dropped(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# a comment\n  a red   dog \n\nA RED DOG\n1234\na cat\n" + LONG + "\n")
    ps = read_prompt_set(f)
    assert ps.prompts == ["a red dog", "a cat"]
    assert ps.dropped == {"empty": 1, "duplicate": 1, "non-text": 1, "too long": 1}
    assert ps.total == 6
    assert "6 entries -> 2 prompts" in ps.summary() and "1 too long" in ps.summary()


def test_json_list_object_and_coco_annotations(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps(["a dog", 3, None, "a dog", "a cat"]))
    ps = read_prompt_set(tmp_path / "l.json")
    assert ps.prompts == ["a dog", "a cat"] and ps.dropped == {"non-text": 1, "empty": 1, "duplicate": 1}
    (tmp_path / "o.json").write_text(json.dumps({"a dog": 0.9, "a cat": 0.87}))  # the reference's {prompt: loss}
    assert read_prompt_set(tmp_path / "o.json").prompts == ["a dog", "a cat"]
    coco = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "id": 5, "caption": "A man riding a horse."},
                                                   {"image_id": 1, "id": 6, "caption": "a man riding a horse."},
                                                   {"image_id": 2, "id": 7, "caption": "Two dogs\nplaying. "}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(coco))
    ps = read_prompt_set(tmp_path / "captions_val2017.json")
    assert ps.prompts == ["A man riding a horse.", "Two dogs playing."] and ps.dropped == {"duplicate": 1}


def test_jsonl_csv_and_tsv_columns(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "a dog"}\n\n"a cat"\n')
    assert read_prompt_set(tmp_path / "p.jsonl").prompts == ["a dog", "a cat"]
    (tmp_path / "p.csv").write_text('id,caption,score\n1,"a dog, running",0.5\n2,,0.1\n3,a cat,0.2\n')
    ps = read_prompt_set(tmp_path / "p.csv")
    assert ps.prompts == ["a dog, running", "a cat"] and ps.dropped == {"empty": 1}
    (tmp_path / "q.csv").write_text("id,my_prompt\n1,a dog\n")
    assert read_prompt_set(tmp_path / "q.csv", column="my_prompt").prompts == ["a dog"]
    with pytest.raises(PromptSetError, match="no 'prompt', 'caption' or 'text' column.*my_prompt"):
        read_prompt_set(tmp_path / "q.csv")
    with pytest.raises(PromptSetError, match="has no column 'nope'"):
        read_prompt_set(tmp_path / "q.csv", column="nope")
    (tmp_path / "p.tsv").write_text("prompt\tx\na dog, big\t1\n")
    assert read_prompt_set(tmp_path / "p.tsv").prompts == ["a dog, big"]


def test_diffusiondb_style_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    # DiffusionDB's metadata.parquet: one row per image, so prompts repeat; other columns are ignored.
    table = pa.table({"image_name": ["a.png", "b.png", "c.png", "d.png", "e.png"],
                      "prompt": ["a castle on a hill, artstation", "a castle on a hill, artstation", None,
                                 "portrait of a cat", LONG],
                      "seed": [1, 2, 3, 4, 5], "cfg": [7.0, 7.0, 7.0, 7.0, 7.0]})
    pq.write_table(table, tmp_path / "metadata.parquet")
    ps = read_prompt_set(tmp_path / "metadata.parquet")
    assert ps.prompts == ["a castle on a hill, artstation", "portrait of a cat"]
    assert ps.dropped == {"duplicate": 1, "empty": 1, "too long": 1} and ps.format == "parquet"
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(PromptSetError, match="not a readable Parquet"):
        read_prompt_set(tmp_path / "bad.parquet")


def test_token_limit_uses_the_clip_tokenizer():
    # 75 single-token words + BOS/EOS = 77 tokens: fits exactly; one more word does not.
    fits, too_long = " ".join(["cat"] * 75), " ".join(["cat"] * 76)
    ps = clean_prompts([fits, too_long + " dog"])
    assert ps.prompts == [fits] and ps.dropped == {"too long": 1}
    counted = []
    ps = clean_prompts(["a cat", fits], count_tokens=lambda t: counted.append(t) or 5)
    assert counted == [fits]  # short prompts need no tokenizer (a token covers at least one byte)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.json", "{not json", "not valid JSON"),
        ("p.json", "42", "must hold a list"),
        ("p.txt", b"\xff\xfe\x00bad", "not UTF-8"),
        ("p.txt", "\n# only a comment\n", "holds no usable prompt"),
        ("p.xlsx", "x", "unknown format"),
        ("p.jsonl", '{"a": 1}\n', "has no 'prompt/caption/text' field"),
        ("p.jsonl", '"a dog"\n\n{"a": 1}\n', "line 3: the object has no 'prompt/caption/text' field"),
        ("p.json", '["a dog", {"text": "a cat"}, {"a": 1}]', r"\[2\]: the object has no"),
        ("p.json", '{"annotations": [{"caption": "a dog"}, 5]}', r"annotations\[1\]: expected an object, got 5"),
        ("p.json", '{"images": [], "annotations": "a dog"}', 'annotations: expected a list, got "a dog"'),
        ("p.json", "[" * 100_000, "cannot be parsed as json|not valid JSON"),
        ("p.jsonl", "1" * 5000, "cannot be parsed as jsonl"),
        ("p.csv", "", "is empty"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PromptSetError, match=message):
        read_prompt_set(f)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompt_set(tmp_path / "nope.txt")
    with pytest.raises(PromptSetError, match="is not a file"):
        read_prompt_set(tmp_path)


def test_world_prompt_spec():
    ps = read_prompt_set("world:hard:6")
    assert len(ps.prompts) == 6 and ps.format == "world"
    assert read_prompt_set("world:hard:6:0").prompts == ps.prompts
    assert read_prompt_set("world:hard:6:1").prompts != ps.prompts


def test_importing_prompt_sets_is_cheap():
    code = "import sys, dpo_diff.prompt_sets; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
