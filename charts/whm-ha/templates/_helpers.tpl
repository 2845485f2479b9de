{{- define "whm-ha.name" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- end -}}

{{- define "whm-ha.labels" -}}
app.kubernetes.io/name: whm-ha
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "whm-ha.selector" -}}
app.kubernetes.io/name: whm-ha
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "whm-ha.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{/* Where the operator works: the watched namespace, or every namespace. */}}
{{- define "whm-ha.clusterwide" -}}{{ if .Values.watchNamespace }}false{{ else }}true{{ end }}{{- end -}}

{{- define "whm-ha.pod" -}}
serviceAccountName: {{ include "whm-ha.name" .root }}-{{ .component }}
automountServiceAccountToken: true
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The kubernetes.io/tls Secret of a component's HTTPS listener (.component: proxy or shim): the one the values
name, else the one the chart's cert-manager Certificate writes; the shim needs one of the two. */}}
{{- define "whm-ha.tlsSecret" -}}
{{- $tls := (index .root.Values .component).tls -}}
{{- if $tls.secretName -}}
{{ $tls.secretName }}
{{- else if or $tls.certManager.enabled (eq .component "proxy") -}}
{{ include "whm-ha.name" .root }}-{{ .component }}-tls
{{- else -}}
{{ fail (printf "%s.tls.secretName: name a kubernetes.io/tls Secret of the release namespace, or set %s.tls.certManager.enabled" .component .component) }}
{{- end -}}
{{- end -}}

{{/* Whether the shim serves plain HTTP beyond its pod's loopback. */}}
{{- define "whm-ha.shimHttp" -}}{{ if or (not .Values.shim.tls.enabled) .Values.shim.tls.keepHttp }}true{{ end }}{{- end -}}

{{/* "true" when the component (operator, proxy, shim, or binlog-archive: the operator's archiver Deployments with
backups.runner=job) is deployed, "" otherwise. */}}
{{- define "whm-ha.componentEnabled" -}}
{{- if eq .component "binlog-archive" -}}
{{- if and .root.Values.operator.enabled (eq .root.Values.backups.runner "job") }}true{{ end -}}
{{- else if (index .root.Values .component).enabled }}true{{ end -}}
{{- end -}}
