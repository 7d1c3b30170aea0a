{{/*
The chart name, overridable with nameOverride.
*/}}
{{- define "smarter-device-manager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the DaemonSet and the ConfigMap: the release name when it already contains the chart
name, else "<release>-<chart>"; overridable with fullnameOverride.
*/}}
{{- define "smarter-device-manager.fullname" -}}
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

{{- define "smarter-device-manager.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smarter-device-manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smarter-device-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "smarter-device-manager.labels" -}}
helm.sh/chart: {{ include "smarter-device-manager.chart" . }}
{{ include "smarter-device-manager.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | quote }}
app.kubernetes.io/component: device-plugin
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The image reference; an empty tag means the chart's appVersion.
*/}}
{{- define "smarter-device-manager.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
The daemon's command line after "smarter-device-manager". The config file is not named: the
daemon reads /root/config/conf.yaml, where the ConfigMap is mounted.
*/}}
{{- define "smarter-device-manager.args" -}}
- serve
{{- if ne .Values.hostDev "/dev" }}
- {{ printf "--host-dev-dir=%s" .Values.hostDev | quote }}
{{- end }}
- {{ printf "--resource-prefix=%s" .Values.resourcePrefix | quote }}
- {{ printf "--removal-grace=%d" (.Values.removalGrace | int64) | quote }}
- {{ printf "--log-level=%s" .Values.logLevel | quote }}
- {{ printf "--log-format=%s" .Values.logFormat | quote }}
{{- if .Values.http.enabled }}
- {{ printf "--http-address=0.0.0.0:%d" (.Values.http.port | int64) | quote }}
{{- end }}
{{- if .Values.cdi.enabled }}
- "--cdi=on"
- "--cdi-dir=/var/run/cdi"
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
