"""Beyond distillation: structured pruning (attention heads, FFN neurons) and int8 quantization of encoders.

    python -m kd_core.compress prune --model DIR --output DIR --target-heads 0.5 --target-ffn 0.5 ...
    python -m kd_core.compress quantize --model DIR --output DIR [--task sst2 --glue-dir DIR]

structure: removing units for real, saving and loading pruned models (`load_pruned`);
importance: E_x |dL(x)/dm| per head and neuron, task loss or self-supervised KL;
prune: the iterative schedule with distillation from the unpruned model after each step;
quantize: dynamic int8 Linear layers for CPU (`load_quantized`); measure: CPU latency and throughput.
"""
