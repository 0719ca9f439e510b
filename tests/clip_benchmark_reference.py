"""Run clip_benchmark's own metric code on given embeddings (executed in its environment).

    python clip_benchmark_reference.py CASE.pt OUT.json [CASE.pt OUT.json ...]

CASE.pt holds image_emb [N, D], labels [N], prompt_emb [C*T, D] (class-major), num_classes,
num_templates, batch_size, and for retrieval ret_image_emb [I, D], ret_text_emb [T, D],
captions_per_image [I]. A fake model returns these rows for index "pixels" and index "tokens",
so clip_benchmark's ``evaluate`` functions run unchanged on exactly these embeddings.
"""

import json
import sys

import torch
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval


class LookupModel(torch.nn.Module):
    def __init__(self, images, texts):
        super().__init__()
        self.images, self.texts = images, texts

    def encode_image(self, index):
        return self.images[index]

    def encode_text(self, index):
        return self.texts[index]


class Loader:
    def __init__(self, batches, classes=None):
        self.batches = batches
        self.dataset = type("D", (), {"classes": classes})()

    def __iter__(self):
        return iter(self.batches)


def main():
    for case_path, out_path in zip(sys.argv[1::2], sys.argv[2::2]):
        run_case(case_path, out_path)


def run_case(case_path, out_path):
    case = torch.load(case_path)
    bs = int(case["batch_size"])
    n, c, t = len(case["labels"]), int(case["num_classes"]), int(case["num_templates"])
    # zero-shot: tokenizer maps the prompt "i" to index i of prompt_emb
    prompts = {f"class{k}": [str(k * t + j) for j in range(t)] for k in range(c)}
    model = LookupModel(case["image_emb"], case["prompt_emb"])
    tokenizer = lambda texts: torch.tensor([int(x) for x in texts])  # noqa: E731
    batches = [(torch.arange(s, min(s + bs, n)), case["labels"][s:s + bs]) for s in range(0, n, bs)]
    zs = zeroshot_classification.evaluate(model, Loader(batches, [f"class{k}" for k in range(c)]), tokenizer,
                                          list(prompts), prompts, "cpu", amp=False)
    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, list(prompts), prompts, "cpu", amp=False)
    # retrieval: image i has captions_per_image[i] captions, numbered in order
    per_image = case["captions_per_image"].tolist()
    owners = [i for i, k in enumerate(per_image) for _ in range(k)]
    model = LookupModel(case["ret_image_emb"], case["ret_text_emb"])
    batches, text_start = [], 0
    for s in range(0, len(per_image), bs):
        idx = list(range(s, min(s + bs, len(per_image))))
        texts = []
        for i in idx:
            texts.append([str(text_start + j) for j in range(per_image[i])])
            text_start += per_image[i]
        batches.append((torch.tensor(idx), texts))
    ret = zeroshot_retrieval.evaluate(model, Loader(batches), tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    json.dump({"zeroshot": zs, "retrieval": ret, "classifier": classifier.T.tolist(), "owners": owners},
              open(out_path, "w"))


if __name__ == "__main__":
    main()
