"""The `k8s` target: the Helm chart in charts/moodle, driven by the kit.

values.py turns Site + Tuning into the chart's values (the only place the k8s numbers are
derived), chart.py renders the chart with a real Helm engine, driver.py runs `helm` and
reads the cluster (status.py).
"""
