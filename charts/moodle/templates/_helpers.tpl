{{/* Names, labels and shared pod parts. Values are read here, never derived: the kit
     renders every number from site.yaml and `kit plan`. */}}

{{- define "moodle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moodle.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "moodle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels; "component" says which part of the site an object is. */}}
{{- define "moodle.labels" -}}
helm.sh/chart: {{ include "moodle.chart" .ctx }}
{{ include "moodle.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: moodle
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "moodle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moodle.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "moodle.annotations" -}}
{{- with .Values.commonAnnotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "moodle.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "moodle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "moodle.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "moodle.secretName" -}}
{{- default (printf "%s-secrets" (include "moodle.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "moodle.moodledataClaim" -}}
{{- default (printf "%s-moodledata" (include "moodle.fullname" .)) .Values.moodledata.existingClaim -}}
{{- end -}}

{{- define "moodle.cnpgCluster" -}}
{{- printf "%s-db" (include "moodle.fullname" .) -}}
{{- end -}}

{{- define "moodle.pooler" -}}
{{- printf "%s-db-pooler" (include "moodle.fullname" .) -}}
{{- end -}}

{{/* The one place the database host is chosen: Moodle's config.php, the Jobs and KEDA use it. */}}
{{- define "moodle.database.host" -}}
{{- if eq .Values.database.type "external" -}}
{{- required "database.external.host is required when database.type is external" .Values.database.external.host -}}
{{- else if .Values.database.cloudnativepg.pgbouncer.enabled -}}
{{- printf "%s.%s.svc.%s" (include "moodle.pooler" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- printf "%s-rw.%s.svc.%s" (include "moodle.cnpgCluster" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}
{{- end -}}

{{- define "moodle.redis.host" -}}
{{- printf "%s-redis.%s.svc.%s" (include "moodle.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* Rendered texts: the kit's (values) or the chart's copy of the reference site's. */}}
{{- define "moodle.configPhp" -}}
{{- tpl (default (.Files.Get "files/config.php") .Values.config.configPhp) . -}}
{{- end -}}
{{- define "moodle.ldapConf" -}}
{{- default (.Files.Get "files/ldap.conf") .Values.config.ldapConf -}}
{{- end -}}
{{- define "moodle.signin" -}}
{{- default (.Files.Get "files/signin.json") .Values.config.signin -}}
{{- end -}}
{{- define "moodle.phpIni" -}}
{{- default (.Files.Get "files/php.ini") .Values.config.phpIni -}}
{{- end -}}
{{- define "moodle.fpmPool" -}}
{{- default (.Files.Get "files/fpm-pool.conf") .Values.config.fpmPool -}}
{{- end -}}
{{- define "moodle.nginxConf" -}}
{{- default (.Files.Get "files/nginx.conf") .Values.config.nginx -}}
{{- end -}}
{{- define "moodle.redisConf" -}}
{{- default (.Files.Get "files/redis.conf") .Values.config.redis -}}
{{- end -}}

{{- define "moodle.alertRules" -}}
{{- default (.Files.Get "files/alerts.yml") .Values.metrics.alertRules -}}
{{- end -}}
{{- define "moodle.pgQueries" -}}
{{- default (.Files.Get "files/pg-queries.yaml") .Values.metrics.pgQueries -}}
{{- end -}}
{{/* The monitoring sidecar: Debian's exporters from the kit's monitor image, one per pod. */}}
{{- define "moodle.exporterSidecar" -}}
- name: {{ .name }}
  image: {{ include "moodle.image" (dict "ctx" .ctx "image" .ctx.Values.metrics.image) }}
  imagePullPolicy: {{ .ctx.Values.images.pullPolicy }}
  command: ["/usr/bin/tini", "--", "/opt/kit/exporters.sh", {{ .spec | quote }}]
  {{- with .env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: metrics
      containerPort: {{ .port }}
      protocol: TCP
  securityContext:
    {{- include "moodle.containerSecurityContext" .ctx | nindent 4 }}
  resources:
    {{- toYaml .ctx.Values.metrics.resources | nindent 4 }}
  {{- with .mounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Pods roll when what they read changes (the same grouping as the kit's CONFIG_FILES). */}}
{{- define "moodle.checksum.web" -}}
{{- list (include "moodle.configPhp" .) (include "moodle.phpIni" .) (include "moodle.fpmPool" .) (include "moodle.nginxConf" .) (include "moodle.ldapConf" .) .Values.config.ldapCa .Values.config.outboundCa | join "\n--\n" | sha256sum -}}
{{- end -}}
{{- define "moodle.checksum.tasks" -}}
{{- list (include "moodle.configPhp" .) (include "moodle.phpIni" .) (include "moodle.ldapConf" .) .Values.config.ldapCa .Values.config.outboundCa | join "\n--\n" | sha256sum -}}
{{- end -}}
{{- define "moodle.checksum.redis" -}}
{{- include "moodle.redisConf" . | sha256sum -}}
{{- end -}}

{{/* Pod security: non-root (www-data, uid 33 in the kit's Debian images). */}}
{{- define "moodle.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "moodle.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment of every Moodle PHP process: no secret (Moodle's PHP info page shows the
     environment); secrets are files of the Secret volume (moodle.phpMounts). */}}
{{- define "moodle.env" -}}
- name: KIT_ROLE
  value: {{ .role | quote }}
{{- /* config.php reads the adhoc limit from here: only workers run adhoc tasks (0 elsewhere). */}}
- name: KIT_ADHOC_CONCURRENCY_LIMIT
  value: {{ ternary .ctx.Values.workers.adhocConcurrencyLimit 0 (eq .role "worker") | quote }}
- name: KIT_DB_HOST
  value: {{ include "moodle.database.host" .ctx | quote }}
- name: KIT_REDIS_HOST
  value: {{ include "moodle.redis.host" .ctx | quote }}
{{- /* configure.php (install Job) maps the application cache to it: the lever redis_cache. */}}
- name: KIT_APP_CACHE
  value: {{ ternary "redis" "file" .ctx.Values.redis.applicationCache | quote }}
{{- end -}}

{{/* Mounts of every Moodle PHP container: the same paths as the kit's Docker target. */}}
{{- define "moodle.phpMounts" -}}
- name: moodledata
  mountPath: /var/moodledata
- name: config
  mountPath: /var/www/moodle/config.php
  subPath: config.php
  readOnly: true
- name: config
  mountPath: /etc/php/8.2/cli/conf.d/90-kit.ini
  subPath: php.ini
  readOnly: true
- name: config
  mountPath: /etc/php/8.2/fpm/conf.d/90-kit.ini
  subPath: php.ini
  readOnly: true
- name: config
  mountPath: /etc/moodle-kit/signin.json
  subPath: signin.json
  readOnly: true
- name: config
  mountPath: /etc/ldap/ldap.conf
  subPath: ldap.conf
  readOnly: true
- name: config
  mountPath: /etc/moodle-kit/ldap-ca.crt
  subPath: ldap-ca.crt
  readOnly: true
- name: config
  mountPath: /etc/moodle-kit/outbound-ca.crt
  subPath: outbound-ca.crt
  readOnly: true
- name: localcache
  mountPath: /var/cache/moodle
- name: tmp
  mountPath: /tmp
- name: secrets
  mountPath: /run/kit/secrets
  readOnly: true
{{- end -}}

{{/* The pre-upgrade hook runs before the release's ConfigMaps are updated, so it reads
     its own copies (made as hooks just before it). */}}
{{- define "moodle.phpVolumes" -}}
{{- $suffix := ternary "-upgrade" "" (default false .hook) -}}
- name: moodledata
  persistentVolumeClaim:
    claimName: {{ include "moodle.moodledataClaim" .ctx }}
- name: config
  configMap:
    name: {{ include "moodle.fullname" .ctx }}-config{{ $suffix }}
- name: scripts
  configMap:
    name: {{ include "moodle.fullname" .ctx }}-scripts{{ $suffix }}
    defaultMode: 0555
- name: localcache
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- /* The Secret as files, the names config.php reads (the kit's Docker targets mount the
     same files at the same path). 0440: owned by root, readable by the pod's group (fsGroup
     33, www-data). */}}
- name: secrets
  secret:
    secretName: {{ include "moodle.secretName" .ctx }}
    defaultMode: 0440
    items:
      - {key: username, path: db_user}
      - {key: password, path: db_password}
      - {key: redis-password, path: redis_password}
      - {key: loadtest-password, path: loadtest_password}
      {{- range .ctx.Values.auth.signinSecrets }}
      - {key: {{ . }}, path: {{ . }}}
      {{- end }}
{{- end -}}

{{- define "moodle.imagePullSecrets" -}}
{{- with .Values.images.pullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Refuse values that break a multi-pod site, with a line saying why. */}}
{{- define "moodle.validate" -}}
{{- if and (not .Values.moodledata.existingClaim) (ne .Values.moodledata.accessMode "ReadWriteMany") -}}
{{- fail (printf "moodledata.accessMode is %s: web, cron and worker pods on different nodes share moodledata, so it must be ReadWriteMany" .Values.moodledata.accessMode) -}}
{{- end -}}
{{- if and .Values.workers.keda.enabled .Values.workers.autoscaling.enabled -}}
{{- fail "workers.keda.enabled and workers.autoscaling.enabled both scale the workers: choose one" -}}
{{- end -}}
{{- if and (eq .Values.database.type "external") .Values.database.cloudnativepg.pgbouncer.enabled -}}
{{- fail "database.cloudnativepg.pgbouncer needs database.type cloudnativepg (use the provider's pooler for an external database)" -}}
{{- end -}}
{{- if and .Values.auth.create (or (not .Values.auth.dbPassword) (not .Values.auth.redisPassword) (not .Values.auth.adminPassword) (not .Values.auth.loadtestPassword)) -}}
{{- fail "auth.create needs every auth.*Password value; better: leave auth.create false and create the Secret yourself (the kit does)" -}}
{{- end -}}
{{- end -}}

{{/* Probes: the same checks as the kit's Docker health checks. */}}
{{- define "moodle.pageCheck" -}}
curl -fsS --max-time 8 -H 'Host: {{ .Values.moodle.host }}' http://127.0.0.1/login/index.php | grep -q 'name="logintoken"'
{{- end -}}

{{- define "moodle.fpmPing" -}}
SCRIPT_NAME=/fpm-ping SCRIPT_FILENAME=/fpm-ping REQUEST_METHOD=GET cgi-fcgi -bind -connect 127.0.0.1:9000 | grep -q pong
{{- end -}}

{{/* A Job that runs one of the chart's scripts with the Moodle image. */}}
{{- define "moodle.jobPod" -}}
metadata:
  labels:
    {{- include "moodle.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "moodle.serviceAccountName" .ctx }}
  automountServiceAccountToken: false
  {{- with include "moodle.imagePullSecrets" .ctx }}{{ . | nindent 2 }}{{ end }}
  securityContext:
    {{- include "moodle.podSecurityContext" (dict "uid" 33) | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "moodle.image" (dict "ctx" .ctx "image" .ctx.Values.images.moodle) }}
      imagePullPolicy: {{ .ctx.Values.images.pullPolicy }}
      command: ["/usr/bin/tini", "--", "/opt/kit-chart/{{ .script }}"]
      env:
        {{- include "moodle.env" (dict "ctx" .ctx "role" .component) | nindent 8 }}
        {{- if eq .component "install" }}
        - name: KIT_ADMIN_USER
          value: {{ .ctx.Values.moodle.adminUser | quote }}
        - name: KIT_ADMIN_EMAIL
          value: {{ .ctx.Values.moodle.adminEmail | quote }}
        - name: KIT_SITE_FULLNAME
          value: {{ .ctx.Values.moodle.fullname | quote }}
        - name: KIT_SITE_SHORTNAME
          value: {{ .ctx.Values.moodle.shortname | quote }}
        {{- end }}
      securityContext:
        {{- include "moodle.containerSecurityContext" .ctx | nindent 8 }}
      resources:
        {{- toYaml .ctx.Values.jobs.resources | nindent 8 }}
      volumeMounts:
        {{- include "moodle.phpMounts" .ctx | nindent 8 }}
        - name: scripts
          mountPath: /opt/kit-chart
          readOnly: true
        {{- if eq .component "install" }}
        - name: install-secret
          mountPath: /run/kit/install
          readOnly: true
        {{- end }}
  volumes:
    {{- include "moodle.phpVolumes" (dict "ctx" .ctx "hook" (eq .component "upgrade")) | nindent 4 }}
    {{- if eq .component "install" }}
    - name: install-secret
      secret:
        secretName: {{ include "moodle.secretName" .ctx }}
        defaultMode: 0440
        items:
          - {key: admin-password, path: admin_password}
    {{- end }}
{{- end -}}
