"""Writes ./tokenizer: a tiny word-level BERT WordPiece tokenizer (the 5 special tokens + avdigits' words), so the
example needs no download. Run once; the folder it writes is committed with the example."""

from pathlib import Path

from transformers import BertTokenizerFast

from edgekit.data.avdigits import VOCAB

HERE = Path(__file__).resolve().parent
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first: padding is id 0, as all-zero input_ids mean


def main(out: Path = HERE / "tokenizer") -> Path:
    out.mkdir(exist_ok=True)
    words = [w for w in VOCAB if not w.startswith("<")]  # avdigits' own <pad>/<unk> are replaced by BERT's
    (out / "vocab.txt").write_text("\n".join(SPECIAL + words) + "\n")
    BertTokenizerFast.from_pretrained(str(out), do_lower_case=True).save_pretrained(str(out))  # reads vocab.txt
    return out


if __name__ == "__main__":
    print(f"wrote {main()}")
