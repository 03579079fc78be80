{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "streamgenre.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "streamgenre.fullname" -}}
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

{{- define "streamgenre.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamgenre.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "streamgenre.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamgenre.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "streamgenre.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamgenre.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding the Redis URL: the user's, or the one this chart creates from `value`. */}}
{{- define "streamgenre.redisSecretName" -}}
{{- default (include "streamgenre.fullname" .) .Values.secrets.redisUrl.existingSecret }}
{{- end }}

{{- define "streamgenre.saslSecretName" -}}
{{- default (include "streamgenre.fullname" .) .Values.secrets.saslPassword.existingSecret }}
{{- end }}

{{/* True ("true") when a SASL password is configured either way. */}}
{{- define "streamgenre.saslEnabled" -}}
{{- if or .Values.secrets.saslPassword.existingSecret .Values.secrets.saslPassword.value }}true{{ end }}
{{- end }}

{{/* True when the chart must create its own Secret. */}}
{{- define "streamgenre.createSecret" -}}
{{- if or (not .Values.secrets.redisUrl.existingSecret) (and .Values.secrets.saslPassword.value (not .Values.secrets.saslPassword.existingSecret)) }}true{{ end }}
{{- end }}

{{- define "streamgenre.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Fail early on combinations that cannot work, instead of rendering them. */}}
{{- define "streamgenre.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are mutually exclusive: KEDA creates its own HPA (its ScaledObject scales on lag and CPU)" }}
{{- end }}
{{- if not .Values.config.metrics_port }}
{{- fail "config.metrics_port is required: it is the container, Service and probe port" }}
{{- end }}
{{- if and (not .Values.secrets.redisUrl.existingSecret) (not .Values.secrets.redisUrl.value) }}
{{- fail "set secrets.redisUrl.existingSecret or secrets.redisUrl.value" }}
{{- end }}
{{- end }}

{{/* The HTTP API's pods: a name of their own, so the daemon's Service, PDB and HPA never select them. */}}
{{- define "streamgenre.apiSelectorLabels" -}}
app.kubernetes.io/name: {{ include "streamgenre.name" . }}-api
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "streamgenre.apiLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamgenre.apiSelectorLabels" . }}
app.kubernetes.io/component: api
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
