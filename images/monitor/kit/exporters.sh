#!/bin/bash
# Start the exporters this machine runs, each in its own restart loop: one exporter that
# cannot reach its service (a stopped replica) must not take the others down. Arguments:
# KIND=PORT=ARG, rendered by the kit (kit/monitoring.py layout).
set -u
conf=/etc/kit/monitor
secrets=/run/kit/monitor-secrets
loop() {   # NAME CMD...: run, and start again 5 s after it stops
    local name=$1; shift
    while :; do
        "$@" 2>&1 | sed -u "s/^/$name: /"
        echo "$name: exited; starting again in 5s" >&2
        sleep 5
    done
}
for spec in "$@"; do
    kind=${spec%%=*}; rest=${spec#*=}; port=${rest%%=*}; arg=${rest#*=}
    case $kind in
        node)
            loop node prometheus-node-exporter --web.listen-address=":$port" --collector.disable-defaults \
                --collector.cpu --collector.meminfo --collector.loadavg --collector.filesystem \
                --collector.filesystem.mount-points-exclude='^/(dev|proc|sys|etc|run)($|/)' &
            ;;
        postgres)
            DATA_SOURCE_URI=$arg DATA_SOURCE_USER_FILE=$secrets/monitor_db_user \
            DATA_SOURCE_PASS_FILE=$secrets/monitor_db_password \
                loop postgres prometheus-postgres-exporter --web.listen-address=":$port" \
                --extend.query-path="$conf/pg-queries.yaml" &
            ;;
        redis)
            tls=(); [[ $arg == rediss://* ]] && tls=(-tls-ca-cert-file=/run/kit/tls/ca.crt)
            loop redis prometheus-redis-exporter -web.listen-address=":$port" -redis.addr="$arg" \
                -redis.password-file="$secrets/redis_passwords.json" "${tls[@]}" &
            ;;
        blackbox)
            loop blackbox prometheus-blackbox-exporter --web.listen-address=":$port" \
                --config.file="$conf/blackbox.yml" &
            ;;
        mtail)
            loop mtail mtail --progs "$conf/edge.mtail" --logs /mnt/kit/logs/edge-metrics.log --port "$port" \
                --logtostderr --emit_prog_label=false &
            ;;
        nginx)
            loop "nginx:$port" prometheus-nginx-exporter -web.listen-address=":$port" -nginx.scrape-uri="$arg" \
                -nginx.retries=1000000 -nginx.retry-interval=5s &
            ;;
        process)
            loop process prometheus-process-exporter -web.listen-address=":$port" \
                -config.path=/opt/kit/process-exporter.yml &
            ;;
        *) echo "exporters.sh: unknown exporter $kind" >&2; exit 2 ;;
    esac
done
wait
