{{/* Names and labels. */}}
{{- define "cdc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdc.fullname" -}}
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

{{- define "cdc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cdc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cdc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "cdc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "source") */}}
{{- define "cdc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cdc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The connector YAML of one component: its `config` with the chart's own `server` and `shutdown_grace_s`, so the
probes, the scrape port and the grace period cannot disagree with what the process serves and waits.
*/}}
{{- define "cdc.config" -}}
{{- $config := deepCopy .config -}}
{{- $_ := set $config "server" (dict "enabled" true "host" "0.0.0.0" "port" (int .root.Values.httpPort)) -}}
{{- $_ := set $config "shutdown_grace_s" .root.Values.shutdownGraceSeconds -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
The connector container of one component.
(dict "root" $ "component" "source" "values" .Values.source "readinessPath" "/readyz")
An empty readinessPath renders no readiness probe (the sidecar form).
*/}}
{{- define "cdc.container" -}}
{{- $root := .root -}}
- name: connector
  image: {{ include "cdc.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: ["run", "/etc/cdc/connector.yaml"]
  ports:
    - name: http
      containerPort: {{ $root.Values.httpPort }}
      protocol: TCP
  {{- $env := concat $root.Values.env $root.Values.credentials.env (.values.env | default list) }}
  {{- with $env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.credentials.existingSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
    # /healthz is red while a component retries a failure; the connector gives up by itself after
    # `retry.give_up_after_s`, so the probe restarts only one stuck for longer than 2 minutes.
    initialDelaySeconds: 10
    periodSeconds: 15
    timeoutSeconds: 3
    failureThreshold: 8
  {{- with .readinessPath }}
  readinessProbe:
    httpGet:
      path: {{ . }}
      port: http
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  {{- end }}
  resources:
    {{- toYaml .values.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/cdc/connector.yaml
      subPath: {{ .component }}.yaml
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- if $root.Values.tls.secretName }}
    - name: tls
      mountPath: {{ $root.Values.tls.mountPath }}
      readOnly: true
    {{- end }}
{{- end -}}

{{/* The volumes the connector container mounts. */}}
{{- define "cdc.volumes" -}}
- name: config
  configMap:
    name: {{ include "cdc.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    # Readable by the connector's user without an fsGroup (the sidecar form's pod may have none).
    defaultMode: 0444
{{- end }}
{{- end -}}

{{/*
Pod annotations: scrape hints and the checksum of the component's own config (a changed config rolls its pods,
and only its pods: a sink's change never moves the source's slot to another pod).
*/}}
{{- define "cdc.podAnnotations" -}}
checksum/config: {{ include "cdc.config" (dict "root" .root "config" .values.config) | sha256sum }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.httpPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every workload. */}}
{{- define "cdc.podSpec" -}}
serviceAccountName: {{ include "cdc.serviceAccountName" .root }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ add .root.Values.shutdownGraceSeconds .root.Values.terminationMarginSeconds }}
{{- with (hasKey .values "podSecurityContext" | ternary .values.podSecurityContext .root.Values.podSecurityContext) }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.values.nodeSelector | default .root.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.values.tolerations | default .root.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $affinity := .values.affinity | default .root.Values.affinity }}
{{- if $affinity }}
affinity:
  {{- toYaml $affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "cdc.selectorLabels" . | nindent 14 }}
{{- end }}
{{- end -}}
