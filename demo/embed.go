//go:build !nodemo

package demo

import "embed"

//go:embed model
var files embed.FS
