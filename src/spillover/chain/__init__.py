"""The induce-and-measure chain: finetune -> generate -> judge -> metrics, each a cached stage.

Modules: ``config`` (the chain YAML's sections), ``checks`` (inputs checked before any stage runs),
``stages`` (finetune, generate, metrics and :func:`run_chain`), ``judging`` (the judge and rescore stages).

Python::

    from spillover.chain.config import load_pipeline_config
    from spillover.chain.stages import run_chain
    result = run_chain(load_pipeline_config("configs/em-chain-smollm2.yaml"))
"""
