// Command check validates deploy/compose.yaml the way `docker compose config` does, without a
// container engine: compose-go (the library behind Docker Compose) loads the file with every
// profile, interpolates it, checks it against the Compose specification's schema and checks
// that every service, volume and network it refers to is defined. It prints the services it
// found and exits non-zero with the loader's error otherwise.
//
//	go run ./deploy/check ../compose.yaml   (run by scripts/check-deploy)
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: check COMPOSE_FILE")
		os.Exit(2)
	}
	path, err := filepath.Abs(os.Args[1])
	if err != nil {
		fail(err)
	}
	content, err := os.ReadFile(path)
	if err != nil {
		fail(err)
	}
	details := types.ConfigDetails{
		WorkingDir:  filepath.Dir(path),
		ConfigFiles: []types.ConfigFile{{Filename: path, Content: content}},
		// The defaults the file gives (${VAR:-default}) apply: no variable is set.
		Environment: types.Mapping{},
	}
	project, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("pigeon", true)
		o.Profiles = []string{"*"}
	})
	if err != nil {
		fail(err)
	}
	names := project.ServiceNames()
	sort.Strings(names)
	fmt.Printf("compose: %s is valid: %d services %v, %d volumes\n",
		filepath.Base(path), len(names), names, len(project.Volumes))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "compose:", err)
	os.Exit(1)
}
