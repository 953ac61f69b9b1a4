{{/* Names: <release>-ferry, or the release name when it already says ferry. */}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's name: ferry-operator, ferry-gateway, ... (call with dict "root" $ "component" "x"). */}}
{{- define "ferry.componentName" -}}
{{- printf "%s-%s" (include "ferry.fullname" .root | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The bundled server's Service when enabled, else the configured URL. */}}
{{- define "ferry.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "ferry.componentName" (dict "root" . "component" "nats")) .Release.Namespace }}
{{- else }}
{{- required "nats.url is required unless nats.enabled" .Values.nats.url }}
{{- end }}
{{- end }}

{{/* Environment shared by the roles that talk to NATS. */}}
{{- define "ferry.commonEnv" -}}
- name: FERRY_NATS_URL
  value: {{ include "ferry.natsUrl" . | quote }}
- name: FERRY_RESULT_RETENTION_SECONDS
  value: {{ .Values.resultRetentionSeconds | int64 | quote }}
- name: FERRY_NATS_REPLICAS
  value: {{ .Values.nats.replicas | int64 | quote }}
- name: FERRY_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.logLevel }}
- name: RUST_LOG
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Bounds of the task queues, for the roles that make them (operator, gateway). */}}
{{- define "ferry.taskQueueEnv" -}}
- name: FERRY_TASK_QUEUE_MAX_TASKS
  value: {{ .Values.taskQueue.maxTasks | int64 | quote }}
{{- with .Values.taskQueue.maxBytes }}
- name: FERRY_TASK_QUEUE_MAX_BYTES
  value: {{ . | int64 | quote }}
{{- end }}
{{- end }}

{{- define "ferry.callbackAllowEnv" -}}
{{- with .Values.callbacks.allowCIDRs }}
- name: FERRY_CALLBACK_ALLOW_CIDRS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}

{{/* The role's ServiceAccount: its own unless serviceAccount.create is false (call with the
     component context and "values"). */}}
{{- define "ferry.serviceAccountName" -}}
{{- if .values.serviceAccount.create }}
{{- default (include "ferry.componentName" .) .values.serviceAccount.name }}
{{- else }}
{{- default "default" .values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The pod template's labels: the selector's and the role's podLabels. */}}
{{- define "ferry.podLabels" -}}
{{ include "ferry.selectorLabels" . }}
{{- with .values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level fields every role shares (call with dict "root" $ "component" "<role>" "values"
     .Values.<role>). Spread constraints without a labelSelector get the role's pods. */}}
{{- define "ferry.podCommon" -}}
serviceAccountName: {{ include "ferry.serviceAccountName" . }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- $selector := dict "labelSelector" (dict "matchLabels" (include "ferry.selectorLabels" $ | fromYaml)) }}
  {{- range . }}
  - {{ toYaml (merge (deepCopy .) $selector) | indent 4 | trim }}
  {{- end }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* HTTP probes on a named port: live while the process serves, ready once it can work. */}}
{{- define "ferry.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ . }}}
  periodSeconds: 5
  failureThreshold: 2
{{- end }}

{{/* The Secret holding the key ring file: the user's, or the one the chart keeps. */}}
{{- define "ferry.sealKeySecret" -}}
{{- default (printf "%s-seal-key" (include "ferry.fullname" .)) .Values.sealKey.existingSecret }}
{{- end }}

{{/* Where the operator, the gateway and the dispatcher read the key ring. */}}
{{- define "ferry.sealKeyEnv" -}}
- name: FERRY_SEAL_KEY_FILE
  value: /etc/ferry/seal-key/{{ .Values.sealKey.secretKey }}
{{- end }}

{{- define "ferry.sealKeyMount" -}}
- name: seal-key
  mountPath: /etc/ferry/seal-key
  readOnly: true
{{- end }}

{{- define "ferry.sealKeyVolume" -}}
- name: seal-key
  secret:
    secretName: {{ include "ferry.sealKeySecret" . }}
    items:
      - key: {{ .Values.sealKey.secretKey }}
        path: {{ .Values.sealKey.secretKey }}
{{- end }}

{{/* How a role reaches NATS (call with dict "root" $ "role" "<role>"): its own .creds file from
     nats.auth.existingSecret and the TLS files, as the --nats-* variables, the mounts and the
     volumes. Each pod mounts only its role's key of the auth Secret; the operator also the
     account's public key and signing key it issues forwarders' credentials with. */}}
{{- define "ferry.natsAccessEnv" -}}
{{- $nats := .root.Values.nats }}
{{- if $nats.auth.existingSecret }}
- name: FERRY_NATS_CREDS_FILE
  value: /etc/ferry/nats-auth/{{ .role }}.creds
{{- if eq .role "operator" }}
# The operator issues each endpoint's forwarders NATS credentials of their own with these.
- name: FERRY_NATS_ACCOUNT_FILE
  value: /etc/ferry/nats-auth/account.pub
- name: FERRY_NATS_ACCOUNT_SIGNING_SEED_FILE
  value: /etc/ferry/nats-auth/account-signing.nk
{{- end }}
{{- end }}
{{- if $nats.tls.caSecret.name }}
- name: FERRY_NATS_TLS_CA_FILE
  value: /etc/ferry/nats-ca/{{ $nats.tls.caSecret.key }}
{{- end }}
{{- if $nats.tls.clientCertSecret }}
- name: FERRY_NATS_TLS_CERT_FILE
  value: /etc/ferry/nats-client-tls/tls.crt
- name: FERRY_NATS_TLS_KEY_FILE
  value: /etc/ferry/nats-client-tls/tls.key
{{- end }}
{{- if $nats.tls.required }}
- name: FERRY_NATS_TLS_REQUIRED
  value: "true"
{{- end }}
{{- end }}

{{- define "ferry.natsAccessMounts" -}}
{{- $nats := .root.Values.nats }}
{{- if $nats.auth.existingSecret }}
- {name: nats-auth, mountPath: /etc/ferry/nats-auth, readOnly: true}
{{- end }}
{{- if $nats.tls.caSecret.name }}
- {name: nats-ca, mountPath: /etc/ferry/nats-ca, readOnly: true}
{{- end }}
{{- if $nats.tls.clientCertSecret }}
- {name: nats-client-tls, mountPath: /etc/ferry/nats-client-tls, readOnly: true}
{{- end }}
{{- end }}

{{- define "ferry.natsAccessVolumes" -}}
{{- $nats := .root.Values.nats }}
{{- if $nats.auth.existingSecret }}
- name: nats-auth
  secret:
    secretName: {{ $nats.auth.existingSecret }}
    defaultMode: 0440
    items:
      - {key: {{ .role }}.creds, path: {{ .role }}.creds}
      {{- if eq .role "operator" }}
      - {key: account-signing.nk, path: account-signing.nk}
      - {key: account.pub, path: account.pub}
      {{- end }}
{{- end }}
{{- if $nats.tls.caSecret.name }}
- name: nats-ca
  secret:
    secretName: {{ $nats.tls.caSecret.name }}
    items:
      - {key: {{ $nats.tls.caSecret.key }}, path: {{ $nats.tls.caSecret.key }}}
{{- end }}
{{- if $nats.tls.clientCertSecret }}
- name: nats-client-tls
  secret:
    secretName: {{ $nats.tls.clientCertSecret }}
    defaultMode: 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{- end }}
{{- end }}

{{/* The operator's one rule on Secrets, exactly the calls it makes (never list or watch): get
     by name of the Secrets an endpoint names (labels first, data only of one labelled
     ferry.dev/callback-credentials=true), and get, create and patch of each endpoint's worker
     Secret (serving token and forwarder NATS credentials: checked for ownership and read back,
     server-side applied, garbage-collected through its owner reference). */}}
{{- define "ferry.operatorSecretRule" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
{{- end }}
