// Package web embeds the operator dashboard's static assets.
package web
