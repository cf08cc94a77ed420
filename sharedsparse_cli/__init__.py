"""The project's command-line tools, installed as console scripts.

    sharedsparse-prefill    the main job: answer a prompt with dense and sparse prefill
    sharedsparse-convert    convert an HF safetensors directory or a GGUF file once
    sharedsparse-calibrate  cluster a model's heads and write its sharing table
    sharedsparse-evaluate   accuracy of sparse prefill against dense
    sharedsparse-bench      the measurement scripts of a source checkout (benchmarks/)

Each module is a thin layer over the library (`models`, `sharedsparse_jax`, `evaluation`): it
parses and checks its options (`flags` holds the vocabulary they share), calls, and reports.
This package sits above the four library packages; none of them imports it.
"""
