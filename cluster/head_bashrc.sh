# sprout-orchestrator: appended to the head node's ~/.bashrc by `ray up` (head_setup_commands).
# `ray submit` runs the sweep in a login shell: it joins the cluster with token authentication.
export RAY_AUTH_MODE=token
# the MLflow server `ray up` started on the head: every study's default --tracking-uri
export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
# `ray down` runs `ray stop` in a login shell on the head: stop the MLflow server that `ray up`
# started there too (it is no Ray process, so `ray stop` alone would leave it running).
ray() {
    if [ "$1" = stop ]; then
        pkill -f "mlflow server --backend-store-uri sqlite:///$HOME/mlflow/mlflow.db" >/dev/null 2>&1 || true
    fi
    command ray "$@"
}
