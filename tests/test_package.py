import alignkit


def test_public_api_resolves():
    for name in alignkit.__all__:
        assert getattr(alignkit, name) is not None
    from alignkit import DPOConfig, DPOTrainer

    assert DPOTrainer.__name__ == "DPOTrainer" and DPOConfig(dataset="demo").beta > 0
