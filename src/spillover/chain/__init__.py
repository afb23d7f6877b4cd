"""The induce-and-measure chain: finetune -> generate -> judge -> metrics, each a cached stage.

Python::

    from spillover.chain.stages import load_pipeline_config, run_chain
    result = run_chain(load_pipeline_config("configs/em-chain-smollm2.yaml"))
"""
